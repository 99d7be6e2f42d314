"""Runs two train steps of each method on a fixed global batch and saves loss + state to .npz.

Used by tests/test_sharding.py in subprocesses, once with 1 CPU device and once with 8
simulated ones (XLA_FLAGS must be set before JAX is imported, hence a separate process).
Usage: python tests/step_equivalence.py OUT_DIR METHOD [METHOD ...]   (writes OUT_DIR/METHOD.npz)
"""
import importlib
import os
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import build_method  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402

GLOBAL_BATCH, SIZE, STEPS = 16, 16, 2


def tiny_config(method: str):
    """The method's demo preset at a global batch of 16 (W-MSE: whitening over all 16)."""
    config = importlib.import_module(f"configs.{method}").get_config("demo")
    config.global_batch_size = GLOBAL_BATCH
    config.optimizer.warmup_epochs = 0.5
    if method == "wmse":
        config.wmse.update(dict(w_size=GLOBAL_BATCH, w_iter=2))
        config.wmse.projector.output_dim = 8
    if method == "moco_v2":
        config.moco_v2.queue_size = 4 * GLOBAL_BATCH
    return config


def run(method: str, out_path: str) -> None:
    config = tiny_config(method)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(GLOBAL_BATCH, mesh)
    model = build_method(config, total_steps=10)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=GLOBAL_BATCH,
                                    steps_per_epoch=5, num_epochs=2)
    sample = np.zeros((2, SIZE, SIZE, 3), np.float32)
    state = step_lib.create_state(model, optimizer, jax.random.PRNGKey(0), sample, num_classes=10)
    state = jax.device_put(state, parallel.state_sharding(state, mesh))
    train_step = step_lib.make_train_step(model, optimizer, lr, num_classes=10)
    rng = np.random.default_rng(0)
    losses, compiled = [], None
    for _ in range(STEPS):
        host = {"views": tuple(rng.normal(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32)
                               for _ in range(model.num_views)),
                "label": rng.integers(0, 10, size=GLOBAL_BATCH).astype(np.int32)}
        batch = parallel.shard_batch(host, mesh)
        compiled = compiled or step_lib.compile_step(train_step, state, batch, mesh)
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(
        {"params": state.params, "batch_stats": state.batch_stats, "method_state": state.method_state}))
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    np.savez(out_path, loss=np.asarray(losses), num_devices=len(jax.devices()), **arrays)


if __name__ == "__main__":
    out_dir, methods = sys.argv[1], sys.argv[2:]
    for name in methods:
        run(name, os.path.join(out_dir, f"{name}.npz"))
