"""A data-parallel train step moves only all-reduces between devices (the gradient sum, BatchNorm
and loss statistics): no all-gather, collective-permute, all-to-all or reduce-scatter.

DINO's demo step (tests/step_equivalence.py's tiny config: multi-crop 2 x 16 px + 2 x 8 px, a
ResNet-10 at width 1/8, global batch 16) compiled, not run, over 8 simulated CPU devices (a
subprocess: XLA_FLAGS before JAX is imported); the collectives are read from its partitioned HLO
(ssl_jax.hlo_collectives). It covers the per-step code every joint-embedding method shares (views
merged example-major, the effective-rank monitor's sample) and DINO's centre. Two sources of
gathers it caught: the centre's mean over target.reshape(-1, K), which merged the view axis with
the sharded batch axis (an all-gather of the teacher outputs), and the rank monitor's z[:256]
slice, which left the SVD's input split over the devices (on a TPU, XLA then partitioned the SVD
itself: ~700 MB of all-gathers, collective-permutes and all-to-alls per ViT-S step on v4-32).
"""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssl_jax.methods.base import rank_sample
from tests.conftest import REPO_ROOT, device_env

METHOD = "dino"


def test_data_parallel_step_has_only_all_reduces():
    proc = subprocess.run([sys.executable, "-m", "tests.test_step_collectives"], env=device_env(8, fast_compile=True),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["num_devices"] == 8 and info["mesh"] == {"data": 8, "fsdp": 1}
    others = [r for r in info["collectives"] if r["kind"] != "all-reduce"]
    assert others == [], others
    # The gradient sum is there (the check above would pass on a program with no collective).
    assert sum(r["bytes"] for r in info["collectives"]) >= info["param_bytes"] > 0


@pytest.mark.parametrize("n", [5, 12])
def test_rank_sample_is_the_first_rows_exactly(n):
    """The monitor's sample is z[:rows] bit for bit (all of z when it has fewer rows), whatever the
    values' magnitudes: the selection product adds nothing but zeros."""
    z = (np.random.default_rng(n).normal(size=(n, 7)) * 10.0 ** np.arange(-3, 4)).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(lambda z: rank_sample(z, rows=8))(z), z[:8])


def _compile_step() -> dict:
    """The collectives of METHOD's tiny train step compiled over every visible device."""
    import jax

    from ssl_jax import hlo_collectives, parallel
    from ssl_jax.methods import build_method
    from ssl_jax.train import step as step_lib
    from ssl_jax.train.optim import build_optimizer
    from tests.step_equivalence import SIZE, tiny_config
    from tests.tiny_run import view_sizes

    config = tiny_config(METHOD)
    mesh = parallel.mesh_from_config(config.mesh)
    b, steps_per_epoch = config.global_batch_size, 5
    method = build_method(config, total_steps=int(steps_per_epoch * config.num_epochs), steps_per_epoch=steps_per_epoch)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=b, steps_per_epoch=steps_per_epoch,
                                    num_epochs=config.num_epochs)
    sample = jax.numpy.zeros((2, SIZE, SIZE, 3))
    state = jax.eval_shape(lambda rng: step_lib.create_state(method, optimizer, rng, sample, num_classes=10),
                           jax.random.PRNGKey(0))
    batch = {"views": tuple(jax.ShapeDtypeStruct((b, s, s, 3), jax.numpy.float32)
                            for s in view_sizes(config, SIZE, method.num_views)),
             "label": jax.ShapeDtypeStruct((b,), jax.numpy.int32), "index": jax.ShapeDtypeStruct((b,), jax.numpy.int32)}
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    text = step_lib.compile_step(train_step, state, mesh).lower(state, batch).compile().as_text()
    records = [{k: r[k] for k in ("kind", "bytes", "shape")} for r in hlo_collectives.parse_collectives(text)]
    return {"num_devices": jax.device_count(), "mesh": dict(mesh.shape), "collectives": records,
            "param_bytes": hlo_collectives.tree_bytes(state.params)}


if __name__ == "__main__":
    print(json.dumps(_compile_step()))
