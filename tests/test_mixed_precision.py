"""bfloat16 compute (config.model.dtype) keeps params, optimizer state and loss math in
float32, and trains like float32 to within bfloat16 rounding."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import byol
from tests.tiny_run import train_steps


def _run(dtype: str):
    config = byol.get_config("demo")
    config.global_batch_size = 16
    config.model.dtype = dtype
    return train_steps(config, image_size=16, steps=2, steps_per_epoch=5)


def test_bfloat16_compute_float32_state_and_loss():
    (s32, l32), (s16, l16) = _run("float32"), _run("bfloat16")
    state_leaves = jax.tree.leaves((s16.params, s16.opt_state, s16.method_state, s16.batch_stats))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in state_leaves), \
        {str(x.dtype) for x in state_leaves}
    assert np.all(np.isfinite(l16))
    # bfloat16 has 8 bits of mantissa: the losses agree to a few parts in a thousand, far
    # closer than a wrong cast (e.g. a bfloat16 loss reduction or a lost update) would allow.
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    diff = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(s16.params), jax.tree.leaves(s32.params))]
    assert max(diff) < 5e-2 and max(diff) > 0
