"""Representation monitors: cheap scalars that detect collapse during self-supervised training.

All are pure JAX functions of [N, D] embedding batches, jit-safe (no host round trip, shapes
checked at trace time), computed in float32 whatever the input dtype. Nothing is device
specific: a batch sharded over N works under jit, XLA inserts the reductions.

  * `collapse_std`: per-dimension std of L2-normalised embeddings (Chen & He 2021, SimSiam §4.1).
  * `effective_rank`: RankMe (Garrido et al. 2023, "RankMe: Assessing the Downstream Performance
    of Pretrained Self-Supervised Representations by Their Rank").
  * `alignment`, `uniformity`: Wang & Isola 2020, "Understanding Contrastive Representation
    Learning through Alignment and Uniformity on the Hypersphere".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.losses import l2_normalize

_EPS = 1e-12
_RANKME_EPS = 1e-7  # the ε of RankMe's p_k = σ_k / ||σ||₁ + ε (their reference code)


def _check_2d(name: str, *zs) -> None:
    for z in zs:
        if jnp.ndim(z) != 2:
            raise ValueError(f"{name}: embeddings must be 2-D [N, D]; got shape {jnp.shape(z)}. "
                             "Flatten them first, e.g. z.reshape(len(z), -1).")


def collapse_std(z) -> jax.Array:
    """Mean over dimensions of the per-dimension std (over the batch) of L2-normalised z [N, D].

    SimSiam §4.1 (Chen & He 2021): about 1/sqrt(D) when the unit vectors are spread out
    (e.g. isotropic Gaussian), 0 when every embedding is the same vector (complete collapse).
    Population std (ddof=0).
    """
    _check_2d("collapse_std", z)
    return jnp.mean(jnp.std(l2_normalize(z), axis=0))


def effective_rank(z) -> jax.Array:
    """RankMe effective rank of z [N, D]: exp(−Σ_k p_k log p_k), p_k = σ_k / ||σ||₁ + ε.

    σ are the singular values of the embedding matrix as given: not centred and not
    normalised, as in RankMe (Garrido et al. 2023), ε = 1e-7. Between ~1 and min(N, D); a rank-r
    matrix with equal singular values gives ≈ r. Costs one SVD of [N, D].
    """
    _check_2d("effective_rank", z)
    z = jnp.asarray(z).astype(jnp.float32)
    s = jnp.linalg.svd(z, compute_uv=False)
    p = s / jnp.maximum(jnp.sum(s), _EPS) + _RANKME_EPS
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


def alignment(z1, z2, alpha: float = 2.0) -> jax.Array:
    """Wang & Isola's L_align: mean over positive pairs of ||f(x) − f(y)||₂^alpha.

    z1[i] and z2[i] are the two views' embeddings of sample i; both are L2-normalised first.
    0 when the views agree exactly, at most 2^alpha.
    """
    _check_2d("alignment", z1, z2)
    if jnp.shape(z1) != jnp.shape(z2):
        raise ValueError(f"alignment: z1 and z2 must have the same shape (positive pairs are "
                         f"rows with the same index); got {jnp.shape(z1)} and {jnp.shape(z2)}.")
    sq = jnp.sum(jnp.square(l2_normalize(z1) - l2_normalize(z2)), axis=-1)
    # ||d||^alpha as (||d||²)^(alpha/2): no sqrt, so alpha=2 stays differentiable at d=0.
    return jnp.mean(sq ** (alpha / 2.0))


def uniformity(z, t: float = 2.0) -> jax.Array:
    """Wang & Isola's L_uniform: log of the mean over pairs i < j of exp(−t ||z_i − z_j||²).

    On L2-normalised z [N, D]; N >= 2. The diagonal (i = j, distance 0) is excluded, as with
    torch.pdist in their code; since distances are symmetric the mean over i < j equals the
    mean over all i ≠ j. 0 for a fully collapsed batch, lower (more negative) = more uniform.
    Builds the [N, N] Gram matrix; the log-mean-exp is evaluated stably.
    """
    _check_2d("uniformity", z)
    n = jnp.shape(z)[0]
    if n < 2:
        raise ValueError(f"uniformity: needs at least 2 embeddings to form a pair; got N={n}.")
    z = l2_normalize(z)
    gram = jnp.dot(z, z.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(z * z, axis=-1)
    # ||a − b||² = ||a||² + ||b||² − 2a·b (not 2 − 2a·b: a zero row stays a zero vector).
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    log_sum = jax.nn.logsumexp(jnp.where(upper, -t * d2, -jnp.inf))
    return log_sum - jnp.log(n * (n - 1) / 2.0)


def representation_monitors(z1, z2) -> dict:
    """All four monitors for a batch of two views' embeddings z1, z2 [N, D].

    collapse_std and effective_rank are of z1 (one SVD per call); alignment pairs z1[i] with
    z2[i]; uniformity is the mean of both views' values, as Wang & Isola's reference code.
    Returns {'collapse_std', 'effective_rank', 'alignment', 'uniformity'} of float32 scalars.
    """
    return {
        "collapse_std": collapse_std(z1),
        "effective_rank": effective_rank(z1),
        "alignment": alignment(z1, z2),
        "uniformity": (uniformity(z1) + uniformity(z2)) / 2.0,
    }


# Collapse verdict on the training metrics (host floats). Complete collapse: every output the
# same vector, the per-dimension std of the normalised outputs -> 0 (SimSiam §4.1, DSSL's
# collapse detector); flagged below a tenth of its healthy value 1/sqrt(D). Dimensional
# collapse: the batch spans ~1 direction, which a projector ending in BatchNorm (SimSiam) can
# reach while its per-dimension std stays 1/sqrt(D); flagged at an effective rank below 2.
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_MIN_RANK = 2.0


def collapse_reason(metrics: dict) -> str | None:
    """Why the training metrics show a collapse (None if they do not): reads the encoder
    monitor (collapse_std, collapse_std_reference) and the projector's (z_std,
    z_std_reference, z_effective_rank) where present."""
    reasons = []
    for std, ref, what in (("collapse_std", "collapse_std_reference", "encoder features"),
                           ("z_std", "z_std_reference", "projector outputs")):
        if std in metrics and ref in metrics and float(metrics[std]) < COLLAPSE_STD_FRACTION * float(metrics[ref]):
            reasons.append(f"{what}: per-dimension std {float(metrics[std]):.2e} < "
                           f"{COLLAPSE_STD_FRACTION:g} x 1/sqrt(D) = {COLLAPSE_STD_FRACTION * float(metrics[ref]):.2e}")
    if "z_effective_rank" in metrics and float(metrics["z_effective_rank"]) < COLLAPSE_MIN_RANK:
        reasons.append(f"projector outputs: effective rank {float(metrics['z_effective_rank']):.2f} "
                       f"< {COLLAPSE_MIN_RANK:g}")
    return "; ".join(reasons) or None
