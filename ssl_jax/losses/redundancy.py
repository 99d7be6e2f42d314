"""Redundancy-reduction and whitening losses (Barlow Twins, VICReg, W-MSE).

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the
input dtype, safe under jit, grad and vmap.
"""
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ssl_jax.losses.regression import l2_normalize

# Barlow Twins standardises with a BatchNorm without affine; this is BatchNorm's eps.
_BN_EPS = 1e-5
# VICReg's eps inside the sqrt of the variance (official code): keeps the std gradient
# finite when a dimension collapses to a constant.
_VICREG_EPS = 1e-4


def _off_diagonal_sq_sum(m: jax.Array) -> jax.Array:
    """sum_{i != j} m_ij^2 of a square matrix."""
    return jnp.sum(m * m) - jnp.sum(jnp.diagonal(m) ** 2)


def barlow_twins(z1: jax.Array, z2: jax.Array, lambd: float = 0.0051) -> jax.Array:
    """Barlow Twins (Zbontar et al., 2021, Eq. 1): sum_i (1 - C_ii)^2 + lambd sum_{i!=j} C_ij^2.

    z1, z2: [N, D]. Each is standardised per dimension over the batch (biased variance,
    eps 1e-5 added to it, as the reference code's BatchNorm1d without affine), then
    C = z1^T z2 / N is their [D, D] cross-correlation.
    """
    def standardise(z):
        z = z.astype(jnp.float32)
        mean = jnp.mean(z, axis=0)
        var = jnp.mean(jnp.square(z - mean), axis=0)
        return (z - mean) * jax.lax.rsqrt(var + _BN_EPS)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]
    on_diag = jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))
    return on_diag + lambd * _off_diagonal_sq_sum(c)


def vicreg(z1: jax.Array, z2: jax.Array, sim_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0) -> jax.Array:
    """VICReg (Bardes et al., ICLR 2022, Eq. 6), as the loss contract writes it.

    loss = sim_weight * mean((z1 - z2)^2)
         + var_weight * (mean_d relu(1 - std(z1)_d) + mean_d relu(1 - std(z2)_d))
         + cov_weight * (sum_{i!=j} cov(z1)_ij^2 / D + sum_{i!=j} cov(z2)_ij^2 / D)
    z1, z2: [N, D]; std = sqrt(var + 1e-4); var and cov unbiased (N - 1); MSE over N and D.

    Note: the authors' released code (facebookresearch/vicreg) halves each view's variance
    term (`mean(relu(1 - std_x)) / 2 + ...`), so its 25/25/1 equals 25/12.5/1 here. The
    paper's equation and the contract have no /2; we keep them, and configs/vicreg.py says
    how to match the released code (var_weight=12.5).
    """
    z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
    n, d = z1.shape
    invariance = jnp.mean(jnp.square(z1 - z2))

    def var_cov(z):
        z = z - jnp.mean(z, axis=0)
        std = jnp.sqrt(jnp.sum(z * z, axis=0) / (n - 1) + _VICREG_EPS)
        cov = z.T @ z / (n - 1)
        return jnp.mean(jax.nn.relu(1.0 - std)), _off_diagonal_sq_sum(cov) / d

    var1, cov1 = var_cov(z1)
    var2, cov2 = var_cov(z2)
    return sim_weight * invariance + var_weight * (var1 + var2) + cov_weight * (cov1 + cov2)


def whiten(x: jax.Array, eps: float = 0.0) -> jax.Array:
    """Cholesky whitening of one batch x [M, D] (Ermolov et al., ICML 2021).

    xn = x - mean; Sigma = xn^T xn / (M - 1); Sigma_s = (1 - eps) Sigma + eps I;
    Sigma_s = L L^T (Cholesky); W = L^{-1}; returns xn W^T, whose covariance is I.
    As `Whitening2d` of the official code (htdt/self-supervised) in training mode: batch
    statistics, no running ones.
    Needs M > D (or eps > 0) for Sigma_s to be positive definite.
    """
    x = x.astype(jnp.float32)
    m, d = x.shape
    # Full float32 matmuls: the Cholesky of a near-singular covariance amplifies the
    # error of the reduced-precision passes some accelerators use by default.
    hi = jax.lax.Precision.HIGHEST
    xn = x - jnp.mean(x, axis=0)
    cov = jnp.matmul(xn.T, xn, precision=hi) / (m - 1)
    eye = jnp.eye(d, dtype=jnp.float32)
    chol = jnp.linalg.cholesky((1.0 - eps) * cov + eps * eye)
    w = solve_triangular(chol, eye, lower=True)
    return jnp.matmul(xn, w.T, precision=hi)


def wmse(z: jax.Array, rng: jax.Array, w_size: int, w_iter: int = 1,
         eps: float = 0.0) -> jax.Array:
    """W-MSE (Ermolov et al., ICML 2021), as the official code (htdt/self-supervised) computes it.

    z: [V, N, D] embeddings of V views (W-MSE 2: V = 2, W-MSE 4: V = 4) of the same N
    images; rng: a PRNG key; w_size: the whitening sub-batch size; w_iter: how many
    random partitions of the batch; eps: covariance shrinkage of `whiten` (official
    default 0). w_size and w_iter must be static under jit. Raises ValueError unless
    w_size divides N and w_size > D (a sub-batch of w_size rows has a covariance of rank
    at most w_size - 1; the check holds for any eps, so that eps may be traced).

    For each of w_iter iterations: a random permutation of the N images is split into
    N / w_size sub-batches; each view's embeddings in each sub-batch are whitened
    separately (`whiten`); then for every pair of views i < j the normalised MSE
    mean_n (2 - 2 cos(w_i,n, w_j,n)) is taken (the code's default `norm_mse_loss`, the
    paper's MSE between L2-normalised whitened vectors). loss = sum over pairs and
    iterations / (w_iter * V(V-1)/2).
    Choice: the whitened embeddings are left in permuted order (the official code scatters
    them back); the mean over images is the same. The partition is a fresh permutation per
    iteration from jax.random.split(rng, w_iter).
    """
    z = jnp.asarray(z, jnp.float32)  # a jax array: it is indexed with a traced permutation
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"wmse: z must be [views >= 2, N, D], got shape {z.shape}")
    v, n, d = z.shape
    if n % w_size != 0:
        raise ValueError(f"wmse: batch size {n} is not divisible by w_size={w_size}; "
                         f"choose a w_size that divides the batch size")
    if w_size <= d:
        raise ValueError(f"wmse: w_size={w_size} must be larger than the embedding size D={d} "
                         f"for a full-rank covariance in each sub-batch; use w_size > {d} "
                         f"(e.g. {2 * d}, dividing the batch size {n}) or a smaller D")
    whiten_all = jax.vmap(jax.vmap(lambda x: whiten(x, eps)))  # over views, then sub-batches
    pairs = [(i, j) for i in range(v) for j in range(i + 1, v)]

    def one_iteration(key):
        perm = jax.random.permutation(key, n)
        w = whiten_all(z[:, perm].reshape(v, n // w_size, w_size, d)).reshape(v, n, d)
        w = l2_normalize(w)
        return sum(jnp.mean(2.0 - 2.0 * jnp.sum(w[i] * w[j], axis=-1)) for i, j in pairs)

    total = jnp.sum(jax.vmap(one_iteration)(jax.random.split(rng, w_iter)))
    return total / (w_iter * len(pairs))
