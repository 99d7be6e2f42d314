"""FUSSL's pseudo-labels and phase-2 loss (Mohamadi, Doretto, Adjeroh; seed 000, §3.2-3.3, §4.1.3).

An ensemble of m blocks votes on every un-augmented image x: block k's vote is the arg-max of its
L2-normalised projector output ẑ_k(x) ∈ R^D (the D output coordinates are the pseudo-classes; the
normalisation does not move the arg-max). n_j(x) = #{k : c_k(x) = j}.

Labels are compact: `classes` [N, m] int32 and `weights` [N, m] float32, the label being
y(x) = Σ_k weights[k]·e_{classes[k]} (weights sum to 1; a weight is non-zero only at the first
block voting a class, so a label has 1 to m non-zeros, as the paper's §3.3). `dense_labels` makes
the [N, D] array; the labels file and the phase-2 state keep the compact form ([N, m] x 2, not N x D).

label_mode (the paper's FUSSL and Table 3's Cases 1 and 2):
  fuzzy  a strict unique plurality (one class with more votes than every other) -> the one-hot of
         that class; otherwise a soft label over the voted classes (memberships below). §3.2's
         rule ("if a class wins more blocks than others ... hard, otherwise ... multiple classes");
         for m <= 3 it is §4.1.3's "m different pseudo-classes" rule, for m >= 4 (2-2 ties) the two
         differ and §3.2's is taken.
  hard   every label one-hot: the plurality class; where several classes tie (all-different votes
         for m = 3), the tied class whose voters are most confident (largest Σ ẑ_{k,c_k} over its
         voters; first block on an exact tie). The paper does not say what Case 1 does with such
         images; dropping them would change the training set, so they are kept with the most
         confident vote.
  soft   every label a membership over its voted classes (Table 4: "m labels"), where the blocks
         agree too (a unanimous vote is still one-hot).
  m = 1 gives a hard label in every mode (the paper: "pseudo-labeling reduces to hard labeling").

membership (the paper says only "different membership scores"; seed-000 extraction options A-C):
  confidence (B, the default)  y_j = Σ_{k: c_k = j} ẑ_{k,j} / Σ_k ẑ_{k,c_k}: each block adds its
         normalised confidence in its own vote. Default because it is the simplest rule that gives
         *different* scores where all m votes differ (A's are always 1/m there) from only the
         quantities the paper names, with no extra hyper-parameter (C needs a temperature).
         ẑ_{k,c_k} < 0 (possible: the projector's last layer has no ReLU) counts as 0; if every
         one is <= 0 the rule falls back to A.
  votes (A)       y_j = n_j / m.
  softmax (C)     p̄ = mean_k softmax(ẑ_k / T), kept at the voted classes and renormalised (so a
         label still has at most m non-zeros); T = `temperature`.
"""
import jax
import jax.numpy as jnp

from ssl_jax.losses.regression import l2_normalize

LABEL_MODES = ("fuzzy", "hard", "soft")
MEMBERSHIPS = ("confidence", "votes", "softmax")
ERROR_MEASURES = ("cross_entropy", "top1")


def _check(name, value, valid):
    if value not in valid:
        raise ValueError(f"{name}={value!r}; choose one of {valid}.")


def fuzzy_labels(outputs, mode: str = "fuzzy", membership: str = "confidence", temperature: float = 0.1):
    """(classes [N, m] int32, weights [N, m] float32) from the blocks' projector outputs
    `outputs` [m, N, D] (module docstring: votes, modes, memberships)."""
    _check("label_mode", mode, LABEL_MODES)
    _check("membership", membership, MEMBERSHIPS)
    z = l2_normalize(outputs.astype(jnp.float32))
    m = z.shape[0]
    votes = jnp.argmax(z, -1)  # [m, N]
    conf = jnp.take_along_axis(z, votes[..., None], -1)[..., 0]
    classes, conf = votes.T.astype(jnp.int32), conf.T  # [N, m]
    same = classes[:, :, None] == classes[:, None, :]  # [N, k, j]: blocks k and j vote alike
    counts = same.sum(-1)  # votes for block k's class
    top = counts.max(-1, keepdims=True)
    # A unique plurality: exactly `top` blocks sit at the maximal count (one class holds them all).
    unique = (counts == top).sum(-1) == top[:, 0]
    first = ~jnp.any(jnp.tril(same, -1), -1)  # block k is the first voter of its class
    pos = jnp.maximum(conf, 0.0)
    support = (same * pos[:, None, :]).sum(-1)  # Σ of the positive confidences of k's class's voters

    by_votes = counts / m
    if membership == "votes":
        soft = by_votes
    elif membership == "confidence":
        total = pos.sum(-1, keepdims=True)
        soft = jnp.where(total > 0, support / jnp.where(total > 0, total, 1.0), by_votes)
    else:
        p = jax.nn.softmax(z / temperature, axis=-1).mean(0)  # [N, D]
        at = jnp.take_along_axis(p, classes, -1) * first
        soft = at / at.sum(-1, keepdims=True)
    soft = jnp.where(first, soft, 0.0)

    winner = jnp.argmax(jnp.where(counts == top, support, -1.0), -1)
    hard = jax.nn.one_hot(winner, m, dtype=jnp.float32)
    weights = {"fuzzy": jnp.where(unique[:, None], hard, soft), "hard": hard, "soft": soft}[mode]
    return classes, weights.astype(jnp.float32)


def dense_labels(classes, weights, num_classes: int):
    """The labels [N, num_classes] of compact (classes, weights) [N, m]: Σ_k weights_k·e_{classes_k}."""
    return (jax.nn.one_hot(classes, num_classes, dtype=jnp.float32) * weights[..., None]).sum(-2)


def soft_cross_entropy(logits, targets, temperature: float = 0.1, normalize: bool = True):
    """FUSSL's phase-2 loss (the paper names no formula; §2.1.2's cluster-level methods use
    cross-entropy): mean over n of −Σ_j y_nj · log softmax(ℓ_n / T)_j, with ℓ_n the projector output
    `logits` [N, D], L2-normalised first when `normalize` (the paper normalises the latent of every
    baseline; logits in [−1, 1] then need T ≪ 1), and targets y [N, D] (rows summing to 1)."""
    logits = logits.astype(jnp.float32)
    if normalize:
        logits = l2_normalize(logits)
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    return -jnp.mean(jnp.sum(targets.astype(jnp.float32) * logp, -1))


def block_errors(outputs, classes, weights, measure: str = "cross_entropy", temperature: float = 0.1,
                 normalize: bool = True):
    """Per-example error [N, m] of each block's output `outputs` [m, N, D] on the pseudo-labels
    (classes, weights) [N, m]; its mean over the training set picks the block phase 2 trains.
    The paper: "the overall error over initial testing on the pseudo-labeled data", no measure named.
      cross_entropy (default)  the phase-2 loss (`soft_cross_entropy`, same T and normalisation) of
                               the block before phase 2: the block that starts closest to the
                               labels; it also grades soft labels, which a 0-1 error cannot.
      top1                     1[argmax ℓ_k ≠ argmax y] (argmax y: the largest membership, the lowest
                               class on a tie).
    """
    _check("block error measure", measure, ERROR_MEASURES)
    y = dense_labels(classes, weights, outputs.shape[-1])
    logits = outputs.astype(jnp.float32)
    if measure == "top1":
        return (jnp.argmax(logits, -1) != jnp.argmax(y, -1)[None]).astype(jnp.float32).T
    if normalize:
        logits = l2_normalize(logits)
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    return -jnp.sum(y[None] * logp, -1).T
