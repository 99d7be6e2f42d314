"""Pretrained weights: read them from a run's workdir or from an exported Flax file.

`load(source)` is the one entry point evaluation and export use:
  * a workdir of `ssl_jax.main` (DIR/config.json + DIR/checkpoints/<step>/): the latest (or a
    given) checkpoint is restored without rebuilding the run (no dataset or optimizer needed),
    and the online or the target (EMA / teacher) network is picked;
  * a `.msgpack` file written by `save_flax` (`python -m ssl_jax.export --format=flax`): the
    encoder config and variables, so `ssl_jax.models` rebuilds the network in one call.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.serialization
import jax
import ml_collections

from ssl_jax import presets
from ssl_jax import results as results_lib
from ssl_jax import storage
from ssl_jax.models import build_encoder
from ssl_jax.train import checkpoint
from ssl_jax.train.state import select_block

NETWORKS = ("default", "online", "target", "random_init")
FLAX_FORMAT = "ssl_jax.pretrained/1"


@dataclasses.dataclass
class Pretrained:
    """An encoder with its weights and where they came from.

    encoder:     the flax module (`ssl_jax.models.build_encoder(model_config)`).
    variables:   {'params': ..., 'batch_stats': ...} of the encoder (NumPy arrays).
    heads:       {head name: {'params', 'batch_stats'}} of the same network (may be empty).
    model_config: the encoder config (name, width, cifar_stem, ...).
    run:         results fields of the source run (method, dataset, backbone, epochs, step).
    network:     'online', 'target' or 'random_init'.
    data:        the pretraining data fields evaluation defaults to (dataset, data_dir,
                 train_split, test_split, image_size, mean, std, views); {} if unknown.
    config:      the full pretraining config when loaded from a workdir (None from a file).
    method_state: the run's method state at that checkpoint (NumPy; {} from a file or a live
                 state): what a method's own evaluation reads (IIC's sub-head losses).
    """

    encoder: Any
    variables: dict
    heads: dict
    model_config: ml_collections.ConfigDict
    run: dict
    network: str
    data: dict = dataclasses.field(default_factory=dict)
    config: ml_collections.ConfigDict | None = None
    method_state: dict = dataclasses.field(default_factory=dict)


# classes / eval_classes: a class-subset run's classes, so its evaluation defaults to them
# (ssl_jax.evaluate.run.resolve_data).
DATA_FIELDS = ("dataset", "data_dir", "train_split", "test_split", "image_size", "mean", "std", "views",
               "classes", "eval_classes")


def _data_fields(config) -> dict:
    data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    return {k: data[k] for k in DATA_FIELDS if k in data}


INPUT_PIXELS = "RGB scaled to [0, 1], then (x - mean) / std per channel"


def input_spec(data: dict, layout: str) -> dict:
    """How an export's network is fed: {'layout': 'NCHW' | 'NHWC', 'pixels', and the run's
    'image_size', 'mean', 'std' where `data` (Pretrained.data) has them}."""
    spec = {"layout": layout, "pixels": INPUT_PIXELS}
    spec.update({k: data[k] for k in ("image_size", "mean", "std") if data.get(k) not in (None, "", ())})
    if "image_size" in spec:
        spec["image_size"] = int(spec["image_size"])
    for k in ("mean", "std"):
        if k in spec:
            spec[k] = [float(v) for v in spec[k]]
    return spec


def random_init(pretrained: Pretrained, seed: int = 0) -> Pretrained:
    """The same encoder at a seeded random initialisation (the 'what did pretraining buy' baseline)."""
    import jax.numpy as jnp

    size = int(pretrained.data.get("image_size") or 32)
    variables = pretrained.encoder.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)), train=False)
    return dataclasses.replace(pretrained, variables=jax.device_get(dict(variables)), heads={},
                               network="random_init")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote to DIR/config.json, completed against the base config (an older
    run's file may lack fields added since)."""
    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: it is not the workdir of an "
                                "ssl_jax.main run. Pass the directory given as --workdir to training, "
                                "or an exported .msgpack file.")
    return presets.complete_config(json.loads(storage.read_text(path)))


def _network_trees(state: dict, network: str) -> tuple[dict, dict]:
    """(params, batch_stats) of the online network or of the momentum target."""
    if network == "online":
        return state["params"], state["batch_stats"]
    target = (state.get("method_state") or {}).get("target")
    if target is None:
        raise ValueError("network='target' asked, but this run has no momentum target (its "
                         "method trains a single network); use network='online'.")
    return target["params"], target["batch_stats"]


# Runs written before config.json carried `evaluated_network`: DINO was the only method whose
# paper evaluates the momentum target (its teacher).
_LEGACY_EVALUATED_NETWORK = {"dino": "target"}


def default_network(config) -> str:
    """The network the run's method paper evaluates ('target' for DINO's teacher, else
    'online'): config.json's `evaluated_network`, written by the training loop. Fallback for an
    older config.json without it: 'target' for method 'dino', else 'online' (what every method
    declared when those runs were written)."""
    return config.get("evaluated_network") or _LEGACY_EVALUATED_NETWORK.get(config.get("method"), "online")


def of_run(config, encoder, variables: dict, *, network: str, step: int, epochs: float | None = None,
           heads: dict | None = None) -> Pretrained:
    """The Pretrained of a training run's network at `step`, whether read from a checkpoint
    (`load_workdir`) or taken from the live train state (ssl_jax.evaluate.in_training)."""
    run = results_lib.run_fields(config, step, None)
    if epochs is not None:
        run["epochs"] = round(float(epochs), 3)
    return Pretrained(encoder=encoder, variables=variables, heads=heads or {}, model_config=config.model,
                      run=run, network=network, data=_data_fields(config), config=config)


def load_workdir(workdir: str, network: str = "default", step: int | None = None) -> Pretrained:
    """The encoder (+ heads) of a training run's checkpoint."""
    if network not in NETWORKS:
        raise ValueError(f"network={network!r}; choose one of {NETWORKS}.")
    config = load_run_config(workdir)
    state, step, meta = checkpoint.restore_raw(workdir, step)
    blocks = config.get("ensemble")  # an ensemble (ssl_jax.methods.ensemble): its evaluated block
    if blocks is not None and int(blocks.size) > 1:
        state = select_block(state, int(blocks.eval_block))
    if network == "default":
        network = default_network(config)
    params, stats = _network_trees(state, "online" if network == "random_init" else network)
    heads = {name: {"params": params[name], "batch_stats": stats.get(name, {})}
             for name in params if name not in ("encoder", "probe")}
    pre = of_run(config, build_encoder(config.model), network=network, step=step, epochs=meta.get("epoch"),
                 variables={"params": params["encoder"], "batch_stats": stats.get("encoder", {})}, heads=heads)
    pre.method_state = state.get("method_state") or {}
    return random_init(pre, int(config.seed)) if network == "random_init" else pre


def save_flax(path: str, pretrained: Pretrained, include_heads: bool = False) -> None:
    """Write encoder config + variables (and optionally heads) as one msgpack file."""
    payload = {
        "format": FLAX_FORMAT,
        "model_config": pretrained.model_config.to_json(),
        "run": json.dumps(pretrained.run),
        "network": pretrained.network,
        "data": json.dumps(pretrained.data),
        "input": json.dumps(input_spec(pretrained.data, "NHWC")),  # what every export format records
        "variables": jax.device_get(pretrained.variables),
        "heads": jax.device_get(pretrained.heads) if include_heads else {},
    }
    # Never a half-written file under the final name.
    storage.write_file(path, flax.serialization.msgpack_serialize(payload))


def load_flax(path: str) -> Pretrained:
    """An encoder and its variables from a `save_flax` file:

        pre = ssl_jax.pretrained.load_flax('byol_r50.msgpack')
        features = pre.encoder.apply(pre.variables, images, train=False)
    """
    payload = flax.serialization.msgpack_restore(storage.read_bytes(path))
    if payload.get("format") != FLAX_FORMAT:
        raise ValueError(f"{path} is not an ssl_jax Flax export (format {payload.get('format')!r}, "
                         f"expected {FLAX_FORMAT!r}); write it with python -m ssl_jax.export --format=flax.")
    # An export written before a model field existed is completed with that field's default
    # (presets.base_config), once, here: the models read their config strictly.
    model_config = presets.complete_config(json.loads(payload["model_config"]), presets.base_config("").model)
    return Pretrained(encoder=build_encoder(model_config), variables=payload["variables"],
                      heads=payload.get("heads") or {}, model_config=model_config,
                      run=json.loads(payload["run"]), network=payload["network"],
                      data=json.loads(payload.get("data") or "{}"))


def load(source: str, network: str = "default", step: int | None = None) -> Pretrained:
    """A workdir (latest or `step` checkpoint; `network` 'default' (the method paper's choice),
    'online', 'target' or 'random_init') or a Flax file (network 'default' or 'random_init')."""
    if storage.resolve(source).is_file():
        pre = load_flax(source)
        if network == "random_init":
            return random_init(pre)
        if network not in ("default", pre.network) or step is not None:
            raise ValueError(f"{source} is an exported file of the {pre.network} network at step "
                             f"{pre.run.get('step')}; network and step can only be chosen for a workdir.")
        return pre
    if not storage.resolve(source).is_dir():
        raise FileNotFoundError(f"{source} is neither a training workdir nor an exported .msgpack file.")
    return load_workdir(source, network, step)
