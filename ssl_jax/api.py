"""The Python API: configs by name, a method's train step on your own arrays, its encoder.

    config = ssl_jax.config("byol", "demo")          # configs/byol.py, preset 'demo'
    training = ssl_jax.build(config, num_steps=100)   # method, optimizer, init and step
    state = training.init()
    for batch in itertools.islice(ssl_jax.batches(training, images), 100):
        state, metrics = training.step(state, batch)
    pre = ssl_jax.pretrained_of(training, state)      # as ssl_jax.load_pretrained returns it

The step is the one `python -m ssl_jax.main` runs (the same method, loss, optimizer, schedules
and sharding over the config's mesh), and `batches` the same augmentation pipeline, fed from a
NumPy array instead of a dataset. Checkpoints, evaluation and logging stay with the command line.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from ssl_jax import parallel
from ssl_jax import pretrained as pretrained_lib
from ssl_jax import presets
from ssl_jax.data import pipeline
from ssl_jax.methods import build_method, ensemble
from ssl_jax.train import loop, refresh
from ssl_jax.train import step as step_lib
from ssl_jax.train.optim import build_optimizer
from ssl_jax.train.state import TrainState

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Where the config files are: inside the package in an installed wheel (setup.py maps configs/
# to ssl_jax/configs), beside it in a checkout or an editable install.
CONFIG_DIRS = (os.path.join(_PACKAGE, "configs"), os.path.join(os.path.dirname(_PACKAGE), "configs"))


def config_dir() -> str:
    """The directory of the config files (configs/byol.py, configs/eval/knn.py, ...)."""
    for d in CONFIG_DIRS:
        if os.path.isfile(os.path.join(d, "byol.py")):
            return d
    raise FileNotFoundError(f"No ssl_jax configs in {' or '.join(CONFIG_DIRS)}; reinstall ssl_jax "
                            "(pip install -e . in a clone) so that its configs/ come with it.")


def config_names() -> list[str]:
    """Every config `config()` accepts: 'byol', 'simclr', ..., 'eval/knn', 'eval/linear', ..."""
    root = config_dir()
    names = []
    for sub in ("", "eval"):
        d = os.path.join(root, sub)
        names += sorted(os.path.join(sub, f[:-3]).replace(os.sep, "/") for f in os.listdir(d)
                        if f.endswith(".py") and not f.startswith("_"))
    return names


def config(name: str, preset: str = "") -> ml_collections.ConfigDict:
    """The config of configs/<name>.py at `preset` ('' = the file's default), as
    `--config=configs/<name>.py:<preset>` gives it: e.g. config('byol', 'demo'),
    config('eval/knn', 'demo'). Fields can be changed before `build` (config.seed = 1)."""
    name = name.removesuffix(".py")
    if name not in config_names():
        raise ValueError(f"Unknown config {name!r}; choose one of: {', '.join(config_names())}.")
    path = os.path.join(config_dir(), *name.split("/")) + ".py"
    return presets.load_config_file(f"{path}:{preset}" if preset else path)


@dataclasses.dataclass(frozen=True)
class Training:
    """A method ready to train: what `build` returns.

    init():             the initial TrainState (seeded by config.seed), on the config's mesh.
    step(state, batch): (new state, metrics) — one optimizer step of the method on a batch of
                        `batches` (the state is donated: use the returned one); metrics hold
                        'loss' and the method's monitors, as device scalars.
    """

    config: ml_collections.ConfigDict
    method: Any
    optimizer: Any
    lr_schedule: Callable
    mesh: Any
    num_classes: int
    init: Callable[[], TrainState]
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]


def build(config: ml_collections.ConfigDict, num_steps: int, num_classes: int = 1,
          steps_per_epoch: int | None = None) -> Training:
    """The method of `config` with its optimizer, initial state and compiled train step, for a
    run of `num_steps` steps (the schedules are functions of the step: LR warm-up and cosine,
    EMA momentum, temperatures). `num_classes`: of the labels given to `batches` (only the
    online linear probe reads them; 1 without labels). `steps_per_epoch`: for settings given in
    epochs (warm-up epochs, queue start); default num_steps / config.num_epochs."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1.")
    mesh = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divisible(config.global_batch_size, mesh)
    spe = int(steps_per_epoch or max(num_steps // max(int(config.num_epochs), 1), 1))
    method = build_method(config, num_steps, spe)
    if refresh.refreshes(method):
        raise ValueError(f"{config.method} refreshes its targets from passes over the whole dataset "
                         "(clustering) between epochs, which the Python step does not do; train it with "
                         "python -m ssl_jax.main (a folder or TFDS dataset).")
    optimizer, lr_schedule = build_optimizer(config.optimizer, global_batch_size=config.global_batch_size,
                                             steps_per_epoch=spe, num_epochs=num_steps / spe)
    info = {"num_classes": int(num_classes)}
    # The sharding of the state from its shapes alone, so the step compiles once, on first use.
    size = int(config.data.image_size)
    sample = np.zeros((2, size, size, 3), np.float32)
    abstract = jax.eval_shape(lambda rng: step_lib.create_state(method, optimizer, rng, sample, int(num_classes)),
                              jax.random.PRNGKey(0))
    train_step = step_lib.compile_step(step_lib.make_train_step(method, optimizer, lr_schedule, int(num_classes)),
                                       abstract, mesh)

    def init() -> TrainState:
        return loop.init_state(config, method, optimizer, info, mesh)[0]

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return train_step(state, parallel.shard_batch(batch, mesh))

    return Training(config=config, method=method, optimizer=optimizer, lr_schedule=lr_schedule, mesh=mesh,
                    num_classes=int(num_classes), init=init, step=step)


def _as_uint8_rgb(images) -> np.ndarray:
    """uint8 [N, H, W, 3] from uint8 or float in [0, 1], with 3 or 1 channels or none."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 3] (or [N, H, W] / [N, H, W, 1] grayscale), NHWC; "
                         f"got shape {x.shape}.")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or x.min() < 0 or x.max() > 1:
            raise ValueError(f"images must be uint8 or floats in [0, 1]; got {x.dtype} in "
                             f"[{x.min()}, {x.max()}].")
        x = np.round(x * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(x, x.shape[:3] + (3,)))


def batches(training: Training, images, labels=None, seed: int | None = None,
            start_step: int = 0) -> Iterator[dict]:
    """Infinite iterator of the method's training batches from your images: uint8 (or floats in
    [0, 1]) [N, H, W, 3] (NHWC; grayscale [N, H, W] is tiled to RGB), labels int [N] or None.

    Each batch is {'views': (float32 [B, S, S, 3] per view, cropped, augmented and normalised
    as config.data.views, image_size, mean and std say), 'label': int32 [B], 'index': int32 [B]}
    with B = config.global_batch_size, exactly what `training.step` takes; epochs are seeded
    permutations of the N images, and batch k is a function of (seed, k) (default config.seed).
    One process (the multi-host input path is python -m ssl_jax.main's)."""
    cfg = training.config
    x = _as_uint8_rgb(images)
    y = np.zeros(len(x), np.int64) if labels is None else np.asarray(labels, np.int64)
    if y.shape != (len(x),):
        raise ValueError(f"labels must be [N] = [{len(x)}]; got shape {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= training.num_classes):
        raise ValueError(f"labels must be in [0, {training.num_classes}) (build(..., num_classes=...)); "
                         f"got [{y.min()}, {y.max()}].")
    b = int(cfg.global_batch_size)
    if len(x) < b:
        raise ValueError(f"{len(x)} images are fewer than one batch (config.global_batch_size={b}).")
    if jax.process_count() != 1:
        raise ValueError("batches() feeds one process; a multi-process run reads its data with "
                         "python -m ssl_jax.main.")
    plan = training.method.view_plan
    standard_views = 1 + max(k for k, _ in plan)
    views = [dict(v) for v in cfg.data.views]
    ds = pipeline.pretrain_dataset(
        None, {}, arrays=(x, y), views=[views[i % len(views)] for i in range(standard_views)],
        image_size=int(cfg.data.image_size), mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
        local_batch=b, steps_per_epoch=len(x) // b, seed=int(cfg.seed if seed is None else seed),
        start_step=int(start_step), view_plan=plan)
    return ds.as_numpy_iterator()


def pretrained_of(training: Training, state: TrainState, network: str = "default") -> pretrained_lib.Pretrained:
    """The encoder of `state` as a `Pretrained` (what `load_pretrained` returns: `encoder`,
    `variables`, `data`), for features (`pre.encoder.apply(pre.variables, x, train=False)`),
    `save_pretrained` and the export formats. `network`: 'default' (the method paper's choice:
    DINO's teacher, else online), 'online' or 'target' (the momentum copy)."""
    method = training.method
    state = ensemble.evaluated_state(method, state)  # an ensemble: its config.ensemble.eval_block
    network = method.evaluated_network if network == "default" else network
    if network == "online":
        params, stats = state.params, state.batch_stats
    elif network == "target" and "target" in (state.method_state or {}):
        params, stats = state.method_state["target"]["params"], state.method_state["target"]["batch_stats"]
    else:
        raise ValueError(f"network={network!r}; choose 'default', 'online' or 'target' (the latter for "
                         "methods with a momentum target).")
    variables = parallel.to_host({"params": params["encoder"], "batch_stats": stats.get("encoder", {})})
    return pretrained_lib.of_run(training.config, method.encoder, variables, network=network,
                                 step=int(parallel.to_host(state.step)))
