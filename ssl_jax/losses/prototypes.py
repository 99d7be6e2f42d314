"""Losses on prototype assignments (SwAV, DINO, CARL, CARP) and SwAV's Sinkhorn-Knopp codes.

Contract (ssl_jax.losses): pure functions of arrays, math in float32 whatever the
input dtype, safe under jit, grad and vmap. Batch reductions are plain jnp reductions, so
when the batch axis is sharded by jax.jit they run over the global batch (XLA inserts the
all-reduces); no axis names are used.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


def sinkhorn(scores: jax.Array, epsilon: float = 0.05, num_iters: int = 3) -> jax.Array:
    """SwAV Sinkhorn-Knopp codes (Caron et al., 2020, Sec. 3.1 and App. A.1).

    scores: [B, K] sample-prototype scores. As the SwAV code: Q = exp(scores / epsilon),
    divided by its total; then num_iters times: each prototype (column here) is rescaled
    to sum 1/K over the batch, then each sample (row) to sum 1/B; finally Q is multiplied
    by B so that every row sums to 1. Returns Q [B, K], float32, without gradient (the
    codes are targets). num_iters may be a Python int or a traced integer.

    Choice: the iterations run in the log domain (each rescaling is a subtraction of a
    logsumexp). It is the same computation as the multiplicative updates, with no
    underflow: with epsilon = 0.05 a sample whose scores all lie ~5 below the batch's
    largest score underflows to an all-zero row of exp(scores/epsilon) in float32, and the
    multiplicative updates then divide 0 by 0 and turn the whole batch into NaN. A constant
    added to all scores changes nothing (the first normalisation removes it).
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn: scores must be [B, K], got shape {scores.shape}")
    return sinkhorn_blocks([scores], epsilon=epsilon, num_iters=num_iters)[0]


def sinkhorn_blocks(blocks, epsilon: float = 0.05, num_iters: int = 3) -> list:
    """`sinkhorn` of the rows of several [B_i, K] score blocks taken together (SwAV's queue
    before the batch), returned as blocks: the same numbers as sinkhorn(concatenate(blocks))
    split back. Why blocks: a concatenation of a replicated block (the queue) and a block split
    over devices (the batch) makes XLA move rows between devices (all-to-alls and permutes on
    TPU); kept apart, rows are normalised where they are and only the [K] column sums are
    reduced over devices."""
    log_qs = [jax.lax.stop_gradient(x.astype(jnp.float32)) / epsilon for x in blocks]
    k, b = log_qs[0].shape[1], sum(x.shape[0] for x in log_qs)

    def logsumexp_rows(log_qs, **kw):  # over every block's rows
        return jax.nn.logsumexp(jnp.stack([jax.nn.logsumexp(x, axis=0, **kw) for x in log_qs]), axis=0)

    total = jax.nn.logsumexp(logsumexp_rows(log_qs))
    log_qs = [x - total for x in log_qs]

    def iteration(_, log_qs):
        cols = logsumexp_rows(log_qs, keepdims=True)
        log_qs = [x - cols - math.log(k) for x in log_qs]
        return [x - jax.nn.logsumexp(x, axis=1, keepdims=True) - math.log(b) for x in log_qs]

    # A loop, not unrolled: compile time stays flat in num_iters.
    log_qs = jax.lax.fori_loop(0, num_iters, iteration, log_qs)
    return [jnp.exp(x + math.log(b)) for x in log_qs]


def _cross_view_cross_entropy(targets: jax.Array, log_probs: jax.Array) -> jax.Array:
    """mean over pairs (a, v), v != a, of mean_i -sum_k targets[a, i, k] log_probs[v, i, k].

    targets [A, N, K], log_probs [V, N, K] with A <= V: target a is the view a of log_probs.
    """
    num_targets, num_views = targets.shape[0], log_probs.shape[0]
    # An elementwise product summed per target view rather than an einsum: a float32 dot
    # may run in reduced precision on accelerators by default; A is small (2 in SwAV/DINO).
    ce = jnp.stack([-jnp.sum(targets[a] * log_probs, axis=(1, 2)) for a in range(num_targets)])
    off_diagonal = np.arange(num_targets)[:, None] != np.arange(num_views)[None, :]
    num_pairs = num_targets * (num_views - 1)
    return jnp.sum(jnp.where(off_diagonal, ce, 0.0)) / (num_pairs * log_probs.shape[1])


def _check_crops(name: str, predictions, targets, what: str) -> None:
    if predictions.ndim != 3 or targets.ndim != 3 or predictions.shape[1:] != targets.shape[1:]:
        raise ValueError(f"{name}: expected [V, N, K] predictions and [A, N, K] {what} with the same "
                         f"N and K, got {predictions.shape} and {targets.shape}")
    if targets.shape[0] > predictions.shape[0]:
        raise ValueError(f"{name}: {targets.shape[0]} {what} crops but only {predictions.shape[0]} "
                         f"predicted crops; {what} crop a must be predicted crop a")
    if predictions.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 crops (pairs of different crops), "
                         f"got {predictions.shape[0]}")


def swav(logits: jax.Array, codes: jax.Array, temperature: float = 0.1) -> jax.Array:
    """SwAV swapped prediction (Caron et al., 2020, Eq. 1-2, multi-crop as in Sec. 3.2).

    logits: [V, N, K] prototype scores of V crops; codes: [A, N, K] targets (Sinkhorn codes)
    of the first A crops, without gradient. loss = mean over every pair (a, v), v != a,
    a < A, v < V, of mean_i -sum_k codes[a, i, k] log softmax(logits[v, i] / T)_k, i.e.
    the SwAV code's sum over pairs divided by A (V - 1).
    """
    _check_crops("swav", logits, codes, "codes")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    targets = jax.lax.stop_gradient(codes.astype(jnp.float32))
    return _cross_view_cross_entropy(targets, log_probs)


def dino(student_logits: jax.Array, teacher_logits: jax.Array, center: jax.Array,
         student_temp: float = 0.1, teacher_temp: float = 0.04) -> jax.Array:
    """DINO self-distillation loss (Caron et al., 2021, Eq. 2-3 and Algorithm 1).

    student_logits: [Vs, N, K]; teacher_logits: [Vt, N, K], Vt <= Vs, teacher crop t is
    student crop t (the global crops come first); center: [K] (or [1, K]).
    targets P_t = softmax((teacher_t - center) / teacher_temp), without gradient (neither
    teacher nor center receives one); loss = mean over pairs (t, s), s != t, of
    mean_i -sum_k P_t[i, k] log softmax(student_s[i] / student_temp)_k.
    teacher_temp may be a traced scalar (it follows a warm-up schedule).
    """
    _check_crops("dino", student_logits, teacher_logits, "teacher")
    log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    centered = teacher_logits.astype(jnp.float32) - jnp.asarray(center, jnp.float32)
    targets = jax.lax.stop_gradient(jax.nn.softmax(centered / teacher_temp, axis=-1))
    return _cross_view_cross_entropy(targets, log_probs)


def _consistency(log_p_a: jax.Array, log_p_b: jax.Array) -> jax.Array:
    """-mean log <p_a, p_b> over every axis but the last (the prototypes)."""
    # log sum_k p_a p_b as a logsumexp of log-probabilities: finite even when the two
    # distributions are near one-hot on different prototypes (the dot product underflows).
    return -jnp.mean(jax.nn.logsumexp(log_p_a + log_p_b, axis=-1))


def _kl_to_uniform(log_p: jax.Array) -> jax.Array:
    """KL(mean_i p_i || uniform) = sum_k q_k log q_k + log K, q = batch mean of p; p over
    the last axis, batch on axis 0, any axes between are independent blocks (one KL each)."""
    # log q by a logsumexp over the batch: finite for every prototype (log_softmax is
    # finite), so q log q = exp(log q) log q is 0, not 0 * -inf = NaN, where q underflows,
    # and its gradient stays finite there too.
    log_q = jax.nn.logsumexp(log_p, axis=0) - math.log(log_p.shape[0])
    return jnp.sum(jnp.exp(log_q) * log_q, axis=-1) + math.log(log_p.shape[-1])


def carl(logits_a: jax.Array, logits_b: jax.Array,
         entropy_weight: float) -> tuple[jax.Array, dict]:
    """CARL (Silva, thesis ch. 5, Eq. 5.3-5.7): consistent assignments to learned prototypes.

    logits_a, logits_b: [N, K] prototype scores z.C of the two views (no normalisation, no
    temperature, Eq. 5.2); p = softmax(logits) (Eq. 5.3).
    consistency = -mean_i log <p_i^a, p_i^b> (Eq. 5.4, computed as a logsumexp of
    log-probabilities); kl = KL(mean_i p_i^a || U) + KL(mean_i p_i^b || U), one KL per view
    summed over the two views (Eq. 5.5, KL(q || U) = sum_k q_k log q_k + log K).
    loss = consistency + entropy_weight * kl (Eq. 5.7; entropy_weight is lambda_e, which may
    be traced: it follows the schedule of Eq. 5.8).
    Returns (loss, {"consistency": ..., "kl": ...}), float32 scalars; the parts are for
    logging (use jax.value_and_grad(..., has_aux=True)).

    The equations are implemented, not the thesis's Listing 2: its `kl_div` returns the
    entropy -sum q log q (the opposite sign, which minimising drives to collapse), and its
    per-direction detach (0.5 * CE(p_a, sg(p_b)) + 0.5 * CE(p_b, sg(p_a))) gives half the
    gradient of Eq. 5.4. Here the gradient flows through both views.
    Ranges: consistency in [0, inf), 0 when both views put all mass on one prototype, log K
    for uniform predictions; kl in [0, 2 log K], 2 log K at full collapse.
    """
    log_p_a = jax.nn.log_softmax(logits_a.astype(jnp.float32), axis=-1)
    log_p_b = jax.nn.log_softmax(logits_b.astype(jnp.float32), axis=-1)
    consistency = _consistency(log_p_a, log_p_b)
    kl = _kl_to_uniform(log_p_a) + _kl_to_uniform(log_p_b)
    return consistency + entropy_weight * kl, {"consistency": consistency, "kl": kl}


def carp_permutation(rng: jax.Array, num_prototypes: int) -> jax.Array:
    """A random permutation of the K prototype indices for `carp`: jax.random.permutation.

    Sample it once per step from a key that both views and every device share (e.g. the
    step's key folded with a constant, not a per-device key), so that all use one partition.
    """
    return jax.random.permutation(rng, num_prototypes)


def carp(logits_a: jax.Array, logits_b: jax.Array, perm: jax.Array, num_blocks: int,
         entropy_weight: float) -> tuple[jax.Array, dict]:
    """CARP (Silva, thesis ch. 6, Eq. 6.3-6.8): CARL on the blocks of a random partition.

    logits_a, logits_b: [N, K] prototype scores of the two views; perm: int [K], a
    permutation of the prototypes (`carp_permutation`), resampled every step and the same
    for both views and all devices; num_blocks: N_P, static, must divide K (block size
    N_B = K / N_P). Prototypes perm[j N_B : (j + 1) N_B] form block j; p_{i,j} is the
    softmax over block j only (Eq. 6.4, denominator over the block, as the text says).
    consistency = -mean_{i,j} log <p^a_{i,j}, p^b_{i,j}> (Eq. 6.5);
    kl = mean_j KL(mean_i p^a_{i,j} || U_{N_B}) + the same for view b, i.e. per view the mean
    over blocks of log N_B + sum_c q_{j,c} log q_{j,c}, summed over the two views as in CARL.
    loss = consistency + entropy_weight * kl. Returns (loss, {"consistency", "kl"}).
    With num_blocks = 1 this is `carl` exactly (any perm).

    The thesis's equations disagree (6.6-6.9 write log K and sum or do not sum over blocks);
    we use log N_B, so each block's KL is 0 at uniform and log N_B at collapse, and the mean
    over blocks, so entropy_weight keeps CARL's scale whatever N_P (the later public CARP
    code, sthalles/carp, also uses log(block size) and a mean over blocks).
    Ranges: consistency 0 when each block's assignment is one-hot and the same for both
    views, log N_B for uniform predictions; kl in [0, 2 log N_B].
    """
    if logits_a.ndim != 2 or logits_a.shape != logits_b.shape:
        raise ValueError(f"carp: logits must be two [N, K] arrays of one shape, got "
                         f"{logits_a.shape} and {logits_b.shape}")
    n, k = logits_a.shape
    if num_blocks < 1 or k % num_blocks != 0:
        raise ValueError(f"carp: K={k} prototypes are not divisible into num_blocks={num_blocks} "
                         f"blocks; choose a num_blocks that divides K")
    block_size = k // num_blocks
    if block_size < 2:
        raise ValueError(f"carp: blocks of {block_size} prototype(s) (K={k}, num_blocks="
                         f"{num_blocks}) make every block softmax identically 1 and the loss "
                         f"constant; use num_blocks <= K / 2")

    def block_log_probs(logits):
        blocks = jnp.take(logits.astype(jnp.float32), perm, axis=1).reshape(n, num_blocks, block_size)
        return jax.nn.log_softmax(blocks, axis=-1)

    log_p_a, log_p_b = block_log_probs(logits_a), block_log_probs(logits_b)
    consistency = _consistency(log_p_a, log_p_b)
    kl = jnp.mean(_kl_to_uniform(log_p_a)) + jnp.mean(_kl_to_uniform(log_p_b))
    return consistency + entropy_weight * kl, {"consistency": consistency, "kl": kl}
