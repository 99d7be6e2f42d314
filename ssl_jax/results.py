"""DIR/results.json: one flat schema for every number training and evaluation report.

The file is ``{"schema_version": 1, "records": [record, ...]}``; a record is one number with
everything needed to put it in a table, and only scalar fields:

| field          | meaning                                                                        |
|----------------|--------------------------------------------------------------------------------|
| method         | pretraining method (config.method), e.g. 'byol'; with heavy augmentations     |
|                | + the dssl mode and policy, e.g. 'simsiam+dssl:ra(2,5)+jigsaw(4)'              |
| dataset        | pretraining dataset, e.g. 'cifar10'                                            |
| backbone       | encoder name (+ '_w2' for width 2), e.g. 'resnet18', 'vit_small'                 |
| epochs         | pretraining epochs done at the evaluated checkpoint (float)                     |
| step           | pretraining step of the evaluated checkpoint                                   |
| protocol       | 'knn', 'linear', 'linear_cached', 'online_probe', 'finetune', 'clustering',     |
|                | 'layer_probe', 'monitor', 'pretrain' (the training run itself)                  |
| eval_dataset   | dataset the protocol ran on ('cifar100' for a cifar10 -> cifar100 transfer)     |
| network        | evaluated weights: 'online', 'target' (EMA / teacher) or 'random_init'          |
| setting        | protocol settings that distinguish records, e.g. 'k=20,T=0.07', 'labels=1%',   |
|                | 'layer=stage3'; '' if none                                                     |
| metric         | 'top1', 'top5', 'nmi', 'ari', 'acc', 'train_seconds', 'effective_rank', ...     |
| value          | the number (accuracies are fractions in [0, 1])                                |
| wall_seconds   | wall time of the protocol run that produced the record                         |
| time           | when it was written, ISO 8601 UTC                                              |

A new record replaces an older one with the same key (every field but value, wall_seconds
and time), so re-running an evaluation updates its numbers and keeps everything else. The file
is replaced atomically: a run that dies mid-write leaves the previous file intact.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from typing import Iterable

from ssl_jax import storage

SCHEMA_VERSION = 1
FIELDS = ("method", "dataset", "backbone", "epochs", "step", "protocol", "eval_dataset", "network",
          "setting", "metric", "value", "wall_seconds", "time")
_NOT_KEY = ("value", "wall_seconds", "time")
KEY_FIELDS = tuple(f for f in FIELDS if f not in _NOT_KEY)
FILENAME = "results.json"


def dataset_label(data) -> str:
    """A data config's dataset as records name it: 'cifar10', or with a class subset
    (data.classes, ssl_jax.data.sources) 'cifar10[classes=5,6,7,8,9]' (more than 10 classes:
    'cifar100[50 classes #<8 hex digits of their SHA-1>]'), so that a subset's or a held-out-class
    evaluation's numbers are never taken for the whole dataset's."""
    classes = tuple(data.get("classes", ()) or ())
    name = str(data["dataset"])
    if not classes:
        return name
    listed = ",".join(str(c) for c in classes)
    if len(classes) <= 10:
        return f"{name}[classes={listed}]"
    return f"{name}[{len(classes)} classes #{hashlib.sha1(listed.encode()).hexdigest()[:8]}]"


def run_fields(config, step: int, steps_per_epoch: int | None) -> dict:
    """The fields a pretraining run fixes (method, dataset, backbone, epochs, step) from its config."""
    model = config.model
    backbone = str(model.name)
    width = float(model.get("width", 1.0))
    if width != 1.0:
        backbone += f"_w{width:g}"
    method = str(config.method)
    dssl = config.get("dssl")
    if dssl is not None and dssl.mode != "none":  # e.g. 'simsiam+dssl:ra(2,5)+jigsaw(4)', 'byol+repro'
        method += f"+{dssl.mode}" + (f":{dssl.heavy_policy}" if dssl.mode != "repro" else "")
    sslpp = config.get("sslpp")
    if sslpp is not None and sslpp.labels:  # SSL++'s semantic head on the proxy task: 'rotnet+sslpp'
        method += "+sslpp"
    blocks = config.get("ensemble")
    if blocks is not None and int(blocks.size) > 1:  # one block of an ensemble: 'simclr+ensemble3'
        method += f"+ensemble{int(blocks.size)}"
    return {"method": method, "dataset": dataset_label(config.data), "backbone": backbone,
            "epochs": round(step / steps_per_epoch, 3) if steps_per_epoch else float("nan"),
            "step": int(step)}


def make_records(run: dict, *, protocol: str, eval_dataset: str, network: str, metrics: dict,
                 setting: str = "", wall_seconds: float = float("nan")) -> list[dict]:
    """One record per entry of `metrics` ({metric name: number}) with the shared fields."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = []
    for metric, value in metrics.items():
        rec = dict(run, protocol=protocol, eval_dataset=eval_dataset, network=network,
                   setting=setting, metric=metric, value=float(value),
                   wall_seconds=round(float(wall_seconds), 2), time=now)
        records.append({f: rec[f] for f in FIELDS})
    return records


def path_of(run_dir: str) -> str:
    return str(storage.join(run_dir, FILENAME))


def read_records(run_dir: str) -> list[dict]:
    """The records of DIR/results.json ([] if there is none)."""
    path = path_of(run_dir)
    if not storage.exists(path):
        return []
    data = json.loads(storage.read_text(path))
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} is not a results file of schema version {SCHEMA_VERSION} "
                         "(written by an older ssl_jax?). Move it away; the next run writes a new one.")
    return list(data["records"])


def write_records(run_dir: str, records: Iterable[dict]) -> list[dict]:
    """Merge `records` into DIR/results.json (same key: the new one wins); returns all records."""
    new = list(records)
    for rec in new:
        missing = [f for f in FIELDS if f not in rec]
        if missing:
            raise ValueError(f"results record lacks fields {missing}: {rec}")
    new_keys = {tuple(r[f] for f in KEY_FIELDS) for r in new}
    kept = [r for r in read_records(run_dir) if tuple(r.get(f) for f in KEY_FIELDS) not in new_keys]
    merged = kept + new
    storage.write_file(path_of(run_dir), json.dumps({"schema_version": SCHEMA_VERSION, "records": merged},
                                                    indent=1))
    return merged


def clean_exponents(text: str) -> str:
    """'1e-05' -> '1e-5', '2.5e+20' -> '2.5e20' wherever they occur in `text` (e.g. 'l2=1e-05')."""
    return re.sub(r"(\d)e([+-])0*(\d)",
                  lambda m: m.group(1) + "e" + ("-" if m.group(2) == "-" else "") + m.group(3), text)


def format_number(value: float, digits: int = 6) -> str:
    """A number as a reader writes it: 1e-5 and 5e-4 (not 1e-05, 0.0005 or 0.0000), 0.07, 4096,
    2.5e20: an exponent below 1e-3 and from 1e6 on, where counting zeros is error-prone."""
    value = float(value)
    if value and (abs(value) < 1e-3 or abs(value) >= 1e6) and math.isfinite(value):
        mantissa, _, exponent = f"{value:.{digits - 1}e}".partition("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return clean_exponents(f"{value:.{digits}g}")


def select(records: Iterable[dict], **match) -> list[dict]:
    """The records whose fields equal every `match` item (e.g. protocol='knn', metric='top1')."""
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]
