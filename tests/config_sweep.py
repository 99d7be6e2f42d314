"""Builds presets of configs at tiny inputs and runs 2 train steps of each; prints JSON lines.

Used by tests/test_config_sweep.py in subprocesses (bounded memory, a fresh XLA cache).
Usage: python tests/config_sweep.py CONFIG_NAME:PRESET [CONFIG_NAME:PRESET ...]
"""
import importlib
import json
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import build_method  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402

IMAGE_SIZE, BATCH = 32, 8


def tiny_batch_size(config) -> int:
    """8 images, or the preset's own whitening sub-batch for W-MSE (it must exceed the
    embedding size, which the preset fixes)."""
    return config.wmse.w_size if config.method == "wmse" else BATCH


def run(config_name: str, preset: str) -> dict:
    t0 = time.perf_counter()
    config = importlib.import_module(f"configs.{config_name}").get_config(preset)
    batch_size = tiny_batch_size(config)
    config.global_batch_size = batch_size
    mesh = parallel.make_mesh()
    method = build_method(config, total_steps=100)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=batch_size,
                                    steps_per_epoch=10, num_epochs=config.num_epochs)
    sample = np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    # Initialised as one compiled program (op-by-op eager init of a ResNet-50 is 2x slower).
    state = jax.jit(lambda rng: step_lib.create_state(method, optimizer, rng, sample, num_classes=10))(
        jax.random.PRNGKey(0))
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    rng = np.random.default_rng(0)
    compiled, losses = None, []
    for _ in range(2):
        host = {"views": tuple(rng.normal(size=(batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
                               for _ in range(method.num_views)),
                "label": rng.integers(0, 10, size=batch_size).astype(np.int32)}
        batch = parallel.shard_batch(host, mesh)
        compiled = compiled or step_lib.compile_step(train_step, state, batch, mesh)
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"config": config_name, "preset": preset, "model": config.model.name, "losses": losses,
            "params": int(num_params), "step": int(state.step), "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(run(*arg.split(":"))), flush=True)
