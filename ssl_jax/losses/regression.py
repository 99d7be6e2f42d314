"""Regression losses between a prediction and a stop-gradient target (BYOL, SimSiam).

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the
input dtype, safe under jit, grad and vmap.
"""
import jax
import jax.numpy as jnp

# Added to the squared norm before the rsqrt: keeps the gradient finite for an all-zero
# row, and is far below the norm of any real embedding (BYOL's reference uses 1e-12 too).
_NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x|| along `axis`, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _NORM_EPS)


def cosine_similarity(p: jax.Array, z: jax.Array) -> jax.Array:
    """Row-wise cosine similarity of [N, D] arrays -> [N], float32."""
    return jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def byol(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL regression loss (Grill et al., 2020, Eq. 2): mean_i 2 - 2 cos(p_i, sg(z_i)).

    p: online predictions [N, D]; z: target projections [N, D]. No gradient reaches z.
    This is the loss of one direction; BYOL symmetrises by adding the swapped views.
    """
    return jnp.mean(2.0 - 2.0 * cosine_similarity(p, jax.lax.stop_gradient(z)))


def simsiam(p: jax.Array, z: jax.Array) -> jax.Array:
    """SimSiam negative cosine (Chen & He, 2021, Eq. 1): mean_i -cos(p_i, sg(z_i))."""
    return -jnp.mean(cosine_similarity(p, jax.lax.stop_gradient(z)))
