"""RotNet's rotation-prediction loss (Gidaris et al., ICLR 2018)."""
import jax
import jax.numpy as jnp


def rotation_cross_entropy(logits: jax.Array) -> jax.Array:
    """Mean cross-entropy of a rotation classifier over every rotated copy.

    logits [R, N, R]: row (r, n) holds the classifier's scores for copy r of image n, the copy
    rotated by r·360/R degrees (RotNet: R = 4, copies 0°, 90°, 180°, 270°), so its target is
    r. Returns −1/(R·N) Σ_r Σ_n log softmax(logits[r, n])_r (RotNet's loss, SSL++ Eq. 3 with
    ℓ the cross-entropy), float32 whatever the input dtype.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim != 3 or logits.shape[0] != logits.shape[2]:
        raise ValueError(f"rotation_cross_entropy: logits must be [R, N, R] (copy, image, class); "
                         f"got shape {logits.shape}.")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    r = logits.shape[0]
    # The target of copy r is class r: the diagonal of the (copy, class) axes.
    picked = jnp.take_along_axis(log_p, jnp.arange(r)[:, None, None], axis=-1)
    return -jnp.mean(picked)
