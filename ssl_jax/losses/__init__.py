"""Pure loss functions of arrays: the loss contract of ssl_jax.

**Contract** (names, argument order and semantics are stable; tests and users depend on them).
Every function here takes arrays and returns a float32 scalar (or the documented array or
(loss, parts) pair): no parameters, no state, no axis names; safe under jit, grad and vmap;
math in float32 whatever the input dtype. Batch reductions are plain jnp reductions, so under
jax.jit with the batch sharded over devices they run over the global batch (XLA inserts the
collectives). Stop-gradients that belong to the loss are applied inside it.

| function | semantics |
|---|---|
| `byol(p, z)` | mean over i of 2 − 2·cos(p_i, stop_grad(z_i)) |
| `simsiam(p, z)` | mean over i of −cos(p_i, stop_grad(z_i)) |
| `nt_xent(z1, z2, temperature=0.1)` | SimCLR NT-Xent over the 2N embeddings: cosine similarity, self-pairs excluded, positive = the other view of the same image, mean over all 2N anchors |
| `info_nce(query, key, queue=None, temperature=0.2)` | query, key [N, D], L2-normalised inside, key under stop_grad. With queue [K, D] (normalised): logits [q·k_i, q·queueᵀ]/T, target 0 (MoCo v2). Without: logits q·kᵀ/T, target i (MoCo v3; no 2T factor); mean cross-entropy |
| `barlow_twins(z1, z2, lambd=0.0051)` | each input standardised per dimension over the batch (biased variance, eps 1e-5); C = z1ᵀz2/N; Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij² |
| `vicreg(z1, z2, sim_weight=25, var_weight=25, cov_weight=1)` | sim_weight·MSE(z1, z2) + var_weight·(mean relu(1 − sqrt(var(z1) + 1e-4)) + same for z2) + cov_weight·(Σ_{i≠j} cov(z1)_ij²/D + same for z2); var and cov unbiased (N − 1) |
| `wmse(z, rng, w_size, w_iter=1, eps=0.0)` | W-MSE on z [V, N, D]: per random partition of the N images into sub-batches of w_size, each view whitened per sub-batch (`whiten`, Cholesky); mean over view pairs i < j and partitions of mean_n (2 − 2·cos(w_i,n, w_j,n)) |
| `sinkhorn(scores, epsilon=0.05, num_iters=3)` | SwAV Sinkhorn-Knopp on exp(scores/ε) for scores [B, K]: alternately normalise prototypes (columns) and samples (rows); returns Q [B, K] whose rows sum to 1 |
| `sinkhorn_blocks(blocks, epsilon=0.05, num_iters=3)` | `sinkhorn` over the rows of several [B_i, K] blocks taken together (SwAV's queue and batch), returned as blocks, with no concatenation |
| `swav(logits, codes, temperature=0.1)` | logits [V, N, K] prototype scores of V crops; codes [A, N, K] targets of the first A crops; mean over every pair (a, v), v ≠ a, of mean_i cross-entropy(codes[a, i], softmax(logits[v, i]/T)) |
| `dino(student_logits, teacher_logits, center, student_temp=0.1, teacher_temp=0.04)` | student [Vs, N, K], teacher [Vt, N, K] (teacher crop t is student crop t); targets softmax((teacher − center)/teacher_temp) under stop_grad; mean over pairs (t, s), s ≠ t, of mean_i cross-entropy with softmax(student/student_temp) |
| `carl(logits_a, logits_b, entropy_weight)` | CARL: −mean_i log⟨p_i^a, p_i^b⟩ + λ_e·(KL(mean p^a ‖ U) + KL(mean p^b ‖ U)), p = softmax(logits); returns (loss, {consistency, kl}) |
| `carp(logits_a, logits_b, perm, num_blocks, entropy_weight)` | CARP: CARL on the num_blocks blocks of the prototype permutation `perm` (`carp_permutation`), softmax within a block, means over blocks; returns (loss, {consistency, kl}) |
| `directional(preds, reps, alpha, beta, gamma, delta, term_scale, pair_loss)` | DSSL's Eq. 6 over four views (v, v', t̂(v), t̂'(v')); returns (loss, terms) |
| `deepcluster_v2(logits, assignments, temperature=0.1)` | logits [H, V, N, K] (prototype scores of V crops for H heads), assignments [H, N] int, −1 = no label yet (ignored); mean over heads of the mean cross-entropy over the V·N rows that have a label, of softmax(logits/T) against the image's assignment (a head with no labelled row: 0) |
| `self_label(log_probs, lam=25.0, tol=0.1, max_iters=1000, valid=None)` | SeLa's Sinkhorn-Knopp labels for log_probs [N, K]: P = exp(λ·log_probs), r = 1/K, c = 1/N; iterations t = 0, 1, …: r ← (1/K)/(Pᵀ·c), c_new ← (1/N)/(P·r); at every t divisible by 10 err = Σ_n abs(c_n/c_new,n − 1); c ← c_new; stop after the first check with err < tol (or max_iters); returns argmax_k r_k·P_nk·c_n as int32 [N] (log domain inside: no underflow at λ = 25); rows with `valid` False (padding) take no part and get −1 |
| `rotation_cross_entropy(logits)` | RotNet: logits [R, N, R] of copy r (rotated by r·360/R degrees) of image n; mean over the R·N rows of the cross-entropy against class r |
| `hierarchical_cross_entropy(super_logits, super_labels, sub_logits, sub_labels)` | DeeperCluster: mean over n of CE(super_logits [N, S], s_n) + CE(sub_logits [N, k], z_n), sub_logits being the logits of the sub-class classifier of image n's own super-class |
| `iic(p1, p2, eps=2.220446049250313e-16)` | p1, p2 [N, C] softmax outputs of two views; P = Σ_i p1_i p2_iᵀ, symmetrised (P + Pᵀ)/2, divided by its sum; marginals Pr, Pc from P; then P, Pr, Pc clamped below at eps; returns −Σ P·(log P − log Pr − log Pc) (= −I, to minimise; 0 ≤ I ≤ ln C) |
| `colorization(logits, targets, weights=None)` | Zhang et al. 2016 Eq. 2: per-pixel logits [..., Q], soft targets [..., Q] (`soft_encode`: 5 nearest ab bins, Gaussian σ 5), optional rebalancing weights [Q] (`rebalance_weights`); mean over pixels of −w[argmax Z]·Σ_q Z_q log softmax(logits)_q |
| `context_encoder(pred, target, weight=None)` | Pathak et al. 2016, L2 only: mean of weight[h, w]·(pred − target)² over [N, h, w, C] (10 on the overlap band, 1 in the hole) |
| `soft_cross_entropy(logits, targets, temperature=0.1, normalize=True)` | FUSSL's phase 2: mean over n of −Σ_j y_nj·log softmax(ℓ_n/T)_j, ℓ the projector output [N, D] (L2-normalised first when `normalize`), targets [N, D] rows summing to 1 |
| `aet(pred, target)` | AET (Zhang et al. 2019): mean over n of ½·‖pred_n − target_n‖² (the free entries of the transformation matrix) |

Helpers with the same conventions: `l2_normalize`, `cosine_similarity`, `neg_cosine`
(D(p, y) = −cos(p, stop_grad(y)), the D term of DSSL), `whiten`, `carp_permutation`, `soft_encode`,
`rebalance_weights` (colorization's targets and weights); FUSSL's pseudo-labels `fuzzy_labels`,
`dense_labels`, `block_errors` (ssl_jax.losses.fuzzy).
A new loss is added here with the same conventions, its equation and source in its docstring.
"""
from ssl_jax.losses.contrastive import info_nce, nt_xent
from ssl_jax.losses.directional import directional, neg_cosine
from ssl_jax.losses.fuzzy import block_errors, dense_labels, fuzzy_labels, soft_cross_entropy
from ssl_jax.losses.iic import iic
from ssl_jax.losses.prototypes import carl, carp, carp_permutation, dino, sinkhorn, sinkhorn_blocks, swav
from ssl_jax.losses.proxy import aet, colorization, context_encoder, rebalance_weights, soft_encode
from ssl_jax.losses.pseudo_labels import deepcluster_v2, hierarchical_cross_entropy, self_label
from ssl_jax.losses.redundancy import barlow_twins, vicreg, whiten, wmse
from ssl_jax.losses.regression import byol, cosine_similarity, l2_normalize, simsiam
from ssl_jax.losses.rotation import rotation_cross_entropy

__all__ = ["byol", "simsiam", "cosine_similarity", "l2_normalize", "nt_xent", "info_nce",
           "barlow_twins", "vicreg", "whiten", "wmse", "sinkhorn", "sinkhorn_blocks", "swav", "dino", "carl", "carp",
           "carp_permutation", "directional", "neg_cosine", "deepcluster_v2", "self_label",
           "hierarchical_cross_entropy", "rotation_cross_entropy", "iic",
           "colorization", "context_encoder", "aet", "soft_encode", "rebalance_weights",
           "soft_cross_entropy", "fuzzy_labels", "dense_labels", "block_errors"]
