"""Train steps of any config on random inputs over the mesh of all visible devices.

Shared by the subprocess scripts of the tests (step_equivalence.py, config_sweep.py).
"""
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.data import sources  # noqa: E402
from ssl_jax.methods import METHODS, build_method  # noqa: E402
from ssl_jax.train import refresh  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402


def view_sizes(config, image_size: int, num_views: int) -> list:
    """Tiny stand-ins for the config's view sizes: `image_size` for full-size views, half of
    it for smaller (multi-crop local) views."""
    views = list(config.data.views)
    full = config.data.image_size
    return [image_size if views[v % len(views)].get("size", full) >= full else image_size // 2
            for v in range(num_views)]


def offline_training_set(config) -> None:
    """Methods with per-example state size it from their training set: an ImageNet preset's
    (not prepared on a test machine) is replaced by the shipped digits (same image size), and
    its cluster counts capped at 10, so they fit the digits' 1,437 images."""
    if hasattr(METHODS[config.method], "refresh_due") and config.data.dataset not in sources.LOCAL_DATASETS:
        config.data.update(dict(dataset="digits", data_dir=None))
        config.eval.batch_size = 8
        section = config[config.method]
        for key in ("num_clusters", "num_sub_clusters", "num_super_clusters", "num_prototypes"):
            if key in section:
                section[key] = min(section[key], 10)


def tiny_image_size(config, size: int) -> int:
    """`size`, or the smallest the preset's backbone takes when that is larger (AlexNet's
    ImageNet layout: three unpadded max-pools need 63 px); the context encoder's own size (its
    decoder is built for the central region of data.image_size px)."""
    if config.method == "context_encoder":
        return int(config.data.image_size)
    return max(size, 64) if config.model.name == "alexnet" and not config.model.cifar_stem else size


def _setup(config, image_size: int, steps_per_epoch: int):
    batch_size = config.global_batch_size
    total = int(steps_per_epoch * config.num_epochs)
    method = build_method(config, total_steps=total, steps_per_epoch=steps_per_epoch)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=batch_size,
                                    steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs)
    sample = np.zeros((2, image_size, image_size, 3), np.float32)
    init = lambda rng: step_lib.create_state(method, optimizer, rng, sample, num_classes=10)
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    return method, init, train_step, optimizer


def trace_step(config, *, image_size: int, steps_per_epoch: int = 10):
    """The abstract (shape, dtype) metrics of one train step, traced without compiling:
    builds every module, the optimizer and the method state of `config`."""
    offline_training_set(config)
    method, init, train_step, _ = _setup(config, image_size, steps_per_epoch)
    state = jax.eval_shape(init, jax.random.PRNGKey(0))
    b = config.global_batch_size
    batch = {"views": tuple(jax.ShapeDtypeStruct((b, s, s, 3), np.float32)
                            for s in view_sizes(config, image_size, method.num_views)),
             "label": jax.ShapeDtypeStruct((b,), np.int32), "index": jax.ShapeDtypeStruct((b,), np.int32)}
    return jax.eval_shape(train_step, state, batch)[1]


def train_steps(config, *, image_size: int, steps: int, steps_per_epoch: int = 10,
                labels_from_one_device: bool = False, extras: dict | None = None):
    """(final state, per-step losses) of `steps` steps of config.method at
    config.global_batch_size on seeded random views of image_size px (multi-crop local views:
    half that), 10 classes, random distinct dataset indices; a method with dataset-level
    refreshes first runs the refresh of epoch 0 over its config's training set (its features
    into extras['refresh_features'] when `extras` is a dict; its labels from a pass on one
    device with `labels_from_one_device`)."""
    batch_size = config.global_batch_size
    mesh = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divisible(batch_size, mesh)
    offline_training_set(config)
    method, init, train_step, optimizer = _setup(config, image_size, steps_per_epoch)
    # Initialised as one compiled program (op-by-op init of a ResNet-50 is 2x slower), directly
    # with the state's shardings (replicated, or split over `fsdp`).
    sharding = parallel.state_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    state = jax.jit(init, out_shardings=sharding)(jax.random.PRNGKey(0))
    if refresh.refreshes(method):  # the dataset-level pass over the config's (real) training set
        features = None
        if method.refresh_features is not None:
            features = refresh.feature_pass(method, state, config, mesh)
            if extras is not None:
                extras["refresh_features"] = features
            if labels_from_one_device:
                # Pseudo-labels are a discontinuous function of the features, which another
                # device count computes in another summation order (equal to ~1e-7, compared via
                # `extras`): k-means then flips borderline points. To compare the steps, the
                # labels come from the same pass on one device, whatever the mesh.
                features = refresh.feature_pass(method, state, config, parallel.make_mesh(num_devices=1))
        state, _ = refresh.run(method, state, 0, 0, config=config, mesh=mesh, optimizer=optimizer,
                               state_sharding=sharding, features=features)
    num_examples = getattr(method, "num_examples", batch_size)
    rng = np.random.default_rng(0)
    compiled, losses = None, []
    sizes = view_sizes(config, image_size, method.num_views)
    for _ in range(steps):
        host = {"views": tuple(rng.normal(size=(batch_size, s, s, 3)).astype(np.float32) for s in sizes),
                "label": rng.integers(0, 10, size=batch_size).astype(np.int32),
                "index": rng.choice(num_examples, size=batch_size, replace=False).astype(np.int32)}
        # Each process feeds its own rows of the same global batch (all of it in one process).
        local = slice(jax.process_index() * batch_size // jax.process_count(),
                      (jax.process_index() + 1) * batch_size // jax.process_count())
        batch = parallel.shard_batch(jax.tree.map(lambda x: x[local], host), mesh)
        compiled = compiled or step_lib.compile_step(train_step, state, mesh)
        state, metrics = compiled(state, batch)
        losses.append(float(parallel.to_host(metrics["loss"])))
    return state, losses
