"""TensorBoard event files of a run: grouped tags, the config as text, evaluation results.

Every scalar goes through `tag_of` (a metric name of metrics.jsonl) or `record_tag` (a
results.json record): the one place that decides where a number appears in TensorBoard.

  train/...     the step's own numbers: loss, lr, ema_tau, grad_norm, probe_top1 (the online
                probe on the training batch), pseudo-label accuracies, train_seconds, ...
  monitor/...   collapse monitors of the training batch (collapse_std, z_std, z_effective_rank
                and their references), and the end-of-run verdict `collapsed`
  eval/...      evaluations: the periodic kNN (eval/knn_top1) and every results.json record,
                eval/<protocol>/<metric>[/<setting>][/on_<eval dataset>][/<network>],
                e.g. eval/knn/top1/k20_T0.1 and eval/knn/top1/k20_T0.1/random_init
  refresh/...   numbers of the per-epoch refresh of clustering methods (refresh_nmi_previous, ...)
  hparams       the resolved config (WORKDIR/config.json) as a Markdown table (text tab)

Open with `tensorboard --logdir WORKDIR` (the tensorboard package is not a dependency of
ssl_jax: `pip install tensorboard`).
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid

from ssl_jax import results as results_lib
from ssl_jax import storage

DIRNAME = "tensorboard"
# Logged every step by the train step (methods/base.py, train/step.py); 'collapsed' is the
# end-of-run verdict of the same monitors (results.json, protocol 'pretrain').
MONITOR_METRICS = frozenset({"collapse_std", "collapse_std_reference", "z_std", "z_std_reference",
                             "z_effective_rank", "collapsed"})
# Evaluations on held-out data that the loop logs between steps (evaluate/in_training.py).
EVAL_METRICS = frozenset({"knn_top1"})
_REFRESH_PREFIX = "refresh_"
_INVALID = re.compile(r"[^-\w.]")  # TensorBoard (tensorboardX) would turn these into '_'


def tag_of(name: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key, e.g. 'loss' -> 'train/loss',
    'z_effective_rank' -> 'monitor/z_effective_rank', 'refresh_nmi_previous' ->
    'refresh/nmi_previous'. A name that already has a group ('a/b') is kept."""
    if "/" in name:
        return name
    if name.startswith(_REFRESH_PREFIX):
        return "refresh/" + name[len(_REFRESH_PREFIX):]
    if name in MONITOR_METRICS:
        return "monitor/" + name
    if name in EVAL_METRICS:
        return "eval/" + name
    return "train/" + name


def _tag_part(text: str) -> str:
    """'k=20,T=0.07' -> 'k20_T0.07', 'labels=1%' -> 'labels1pct', 'layer=stage3' ->
    'layer_stage3': a readable tag component with only the characters TensorBoard keeps."""
    parts = []
    for item in str(text).split(","):
        key, eq, value = item.partition("=")
        value = value.replace("%", "pct")
        if not eq:
            parts.append(key.replace("%", "pct"))
        else:  # a number reads attached to its name (k20); a word needs a separator (layer_stage3)
            parts.append(key + value if value[:1].isdigit() or value[:1] == "." else f"{key}_{value}")
    return _INVALID.sub("_", "_".join(p for p in parts if p))


def record_tag(record: dict) -> str | None:
    """The tag of a results.json record (see the module docstring); None for the 'pretrain'
    records whose numbers the loop already logged at every step."""
    protocol, metric = str(record["protocol"]), str(record["metric"])
    if protocol == "pretrain":
        return None if metric in MONITOR_METRICS - {"collapsed"} else tag_of(metric)
    parts = ["eval", _tag_part(protocol), _tag_part(metric)]
    if record.get("setting"):
        parts.append(_tag_part(record["setting"]))
    eval_dataset = record.get("eval_dataset")
    if eval_dataset and eval_dataset != record.get("dataset"):  # a transfer evaluation
        parts.append("on_" + _tag_part(eval_dataset))
    if record.get("network", "online") != "online":  # the baseline sorts next to the trained network
        parts.append(_tag_part(record["network"]))
    return "/".join(parts)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def _readable(value) -> str:
    if isinstance(value, float):
        return results_lib.format_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_readable(v) for v in value) + "]"
    return json.dumps(value) if not isinstance(value, str) else value


def hparams_text(config: dict) -> str:
    """The config (config.json's dict) as a Markdown table of dotted field names and values,
    numbers written as a reader writes them (1e-5, not 1e-05 or 0.0000)."""
    rows = ["| field | value |", "|---|---|"]
    for name, value in _flatten(config):
        rows.append(f"| {name} | {_readable(value).replace('|', '&#124;')} |")
    return "\n".join(rows)


def summary_writer(workdir: str):
    """A tensorboardX SummaryWriter on WORKDIR/tensorboard whose event file cannot overwrite
    another one: tensorboardX names files by the second and hostname, and two writers opened in
    the same second (a resume, an evaluation right after training) would share a name."""
    from tensorboardX import SummaryWriter  # event files without the tensorboard package

    return SummaryWriter(str(storage.join(workdir, DIRNAME)),
                         filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")


class Writer:
    """The run's scalars in TensorBoard under grouped tags (`tag_of`), with the config as text."""

    def __init__(self, workdir: str, step: int = 0):
        self._tb = summary_writer(workdir)
        config_path = storage.join(workdir, "config.json")
        if storage.exists(config_path):  # written by the loop before the writer is opened
            try:
                config = json.loads(storage.read_text(config_path))
            except ValueError:
                config = None
            if isinstance(config, dict):
                self._tb.add_text("hparams", hparams_text(config), global_step=int(step))

    def add_scalar(self, name: str, value, global_step: int) -> None:
        """`value` of the metrics.jsonl key `name` at `global_step`, under tag_of(name)."""
        self._tb.add_scalar(tag_of(name), value, global_step=global_step)

    def flush(self) -> None:
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


def write_records(workdir: str, records: list[dict]) -> list[str]:
    """Results records (results.json) as scalars at their pretraining step, under record_tag;
    returns the tags written. A non-finite value is written as is (TensorBoard shows it)."""
    tags = []
    with summary_writer(workdir) as tb:
        for rec in records:
            tag = record_tag(rec)
            value = rec.get("value")
            if tag is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            step = rec.get("step")
            step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else 0
            tb.add_scalar(tag, float(value), global_step=step)
            tags.append(tag)
    return tags
