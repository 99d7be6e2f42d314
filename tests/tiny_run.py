"""Train steps of any config on random inputs over the mesh of all visible devices.

Shared by the subprocess scripts of the tests (step_equivalence.py, config_sweep.py).
"""
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import build_method  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402


def train_steps(config, *, image_size: int, steps: int, steps_per_epoch: int = 10):
    """(final state, per-step losses) of `steps` steps of config.method at
    config.global_batch_size on seeded random views of image_size px, 10 classes."""
    batch_size = config.global_batch_size
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(batch_size, mesh)
    total = int(steps_per_epoch * config.num_epochs)
    method = build_method(config, total_steps=total)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=batch_size,
                                    steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs)
    sample = np.zeros((2, image_size, image_size, 3), np.float32)
    # Initialised as one compiled program (op-by-op init of a ResNet-50 is 2x slower).
    state = jax.jit(lambda rng: step_lib.create_state(method, optimizer, rng, sample, num_classes=10),
                    out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    rng = np.random.default_rng(0)
    compiled, losses = None, []
    for _ in range(steps):
        host = {"views": tuple(rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
                               for _ in range(method.num_views)),
                "label": rng.integers(0, 10, size=batch_size).astype(np.int32)}
        batch = parallel.shard_batch(host, mesh)
        compiled = compiled or step_lib.compile_step(train_step, state, batch, mesh)
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses
