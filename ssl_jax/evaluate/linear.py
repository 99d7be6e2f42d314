"""Fast linear evaluation on cached (frozen) features.

A full-batch, L2-regularised multinomial logistic regression fitted by L-BFGS (optax.lbfgs with
its default zoom line search) inside one jitted `lax.while_loop`. This is the "offline" linear
probe: features are extracted once, then many regularisation strengths are fitted in seconds.

Objective, with x standardised per dimension by the train mean/std:

    mean_i CE(softmax(x_i W + b), y_i) + l2/2 * ||W||^2        (b is not regularised)

which is sklearn's LogisticRegression (lbfgs, multinomial) with C = 1 / (l2 * N).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from ssl_jax.train import preemption

_STD_EPS = 1e-6
_HIGHEST = jax.lax.Precision.HIGHEST


class LinearClassifier(NamedTuple):
    """Linear classifier acting on raw (unstandardised) features: logits = x @ w + b."""
    w: jax.Array  # [D, C]
    b: jax.Array  # [C]


def standardization_stats(features) -> tuple[jax.Array, jax.Array]:
    """Per-dimension mean and std (biased) of `features`; std of constant dimensions is 1."""
    x = jnp.asarray(features, jnp.float32)
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    return mean, jnp.where(std > _STD_EPS, std, 1.0)


def regularized_loss(w, b, x, labels, l2):
    """Mean softmax cross-entropy of logits x @ w + b plus l2/2 * ||w||^2 (b unpenalised)."""
    logits = jnp.dot(x, w, precision=_HIGHEST) + b
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(ce) + 0.5 * l2 * jnp.sum(w * w)


@functools.partial(jax.jit, static_argnames=("num_classes", "memory_size"))
def _fit_lbfgs(x, labels, l2, num_steps, tol, *, num_classes, memory_size):
    """L-BFGS on `regularized_loss` from zero; stops at num_steps or when ||grad|| < tol."""
    labels = labels.astype(jnp.int32)

    def objective(params):
        return regularized_loss(params[0], params[1], x, labels, l2)

    params = (jnp.zeros((x.shape[1], num_classes), jnp.float32),
              jnp.zeros((num_classes,), jnp.float32))
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        # Re-uses the value/grad the line search already computed at the accepted point.
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=objective)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < num_steps) & (grad_norm >= tol))

    params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
    return params, otu.tree_get(state, "count"), otu.tree_get(state, "value")


def train_linear_classifier(features, labels, *, num_classes: int, l2: float,
                            num_steps: int = 1000, tol: float = 1e-5,
                            memory_size: int = 10) -> LinearClassifier:
    """Fit an L2-regularised multinomial logistic regression on frozen features.

    The features are standardised with the mean/std of `features` (constant dimensions keep
    std 1) before fitting, so that one l2 grid suits any feature scale; the penalty
    l2/2 * ||W||^2 applies to the weights of the standardised problem and the bias is not
    penalised. The returned classifier has the standardisation folded in, so it applies to raw
    features (e.g. test features standardised with the train statistics):
    logits = x @ w + b.

    Args:
      features: [N, D] numpy or jax array.
      labels: [N] integer labels in [0, num_classes).
      num_classes: C.
      l2: regularisation strength on the mean-loss scale (sklearn C = 1 / (l2 * N)).
      num_steps: maximum L-BFGS iterations (each one gradient + a zoom line search).
      tol: stop when the gradient norm of the objective falls below this.
      memory_size: L-BFGS history length.

    Returns:
      LinearClassifier(w [D, C], b [C]).
    """
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError("train_linear_classifier: expected features [N, D] and labels [N] "
                         f"with N > 0; got {x.shape} and {y.shape}.")
    mean, std = standardization_stats(x)
    (w, b), _, _ = _fit_lbfgs((x - mean) / std, y, jnp.float32(l2), jnp.int32(num_steps),
                              jnp.float32(tol), num_classes=int(num_classes),
                              memory_size=int(memory_size))
    # (x - mean)/std @ w + b  ==  x @ (w/std) + (b - (mean/std) @ w)
    w_raw = w / std[:, None]
    b_raw = b - jnp.dot(mean / std, w, precision=_HIGHEST)
    return LinearClassifier(w_raw, b_raw)


def predict_logits(classifier: LinearClassifier, features) -> jax.Array:
    """Logits [N, C] of raw features under a classifier from `train_linear_classifier`."""
    x = jnp.asarray(features, jnp.float32)
    return jnp.dot(x, classifier.w, precision=_HIGHEST) + classifier.b


def _accuracies(classifier, features, labels) -> tuple[float, float]:
    logits = np.asarray(predict_logits(classifier, features), np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"linear probe: labels shape {labels.shape} does not match "
                         f"{logits.shape[0]} features.")
    true = logits[np.arange(len(labels)), labels]
    rank = np.sum(logits > true[:, None], axis=1)  # classes scoring strictly higher
    top1 = np.argmax(logits, axis=1) == labels
    return float(np.mean(top1)), float(np.mean(top1 | (rank < 5)))


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, *,
                          num_classes: int,
                          l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                          holdout_fraction: float = 0.2, seed: int = 0,
                          num_steps: int = 1000) -> dict:
    """Linear probe: choose l2 on held-out TRAIN data, refit on all train data, score test.

    A seeded random `holdout_fraction` of the train features is held out; a classifier is fitted
    on the rest for every l2 in `l2_grid` and scored (top-1) on the held-out part. The best l2
    (ties go to the larger l2, i.e. the simpler model) is refitted on all train features and
    evaluated on the test features. The test labels are read only for that final score.

    Returns:
      {'top1', 'top5': test accuracies in [0, 1] (top5 = 1.0 when num_classes <= 5),
       'l2': chosen strength, 'holdout_top1': {l2: held-out top-1 accuracy}}.
    """
    train_features = np.asarray(train_features, np.float32)
    train_labels = np.asarray(train_labels).astype(np.int32)
    n = train_features.shape[0]
    if not l2_grid:
        raise ValueError("linear_probe_accuracy: l2_grid is empty.")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("linear_probe_accuracy: holdout_fraction must be in (0, 1); got "
                         f"{holdout_fraction}.")
    n_holdout = int(round(holdout_fraction * n))
    if n_holdout < 1 or n_holdout >= n:
        raise ValueError(f"linear_probe_accuracy: {n} train examples are too few to hold out "
                         f"a fraction {holdout_fraction} for choosing l2.")
    perm = np.random.default_rng(seed).permutation(n)
    hold, fit = perm[:n_holdout], perm[n_holdout:]

    holdout_top1 = {}
    for l2 in l2_grid:
        clf = train_linear_classifier(train_features[fit], train_labels[fit],
                                      num_classes=num_classes, l2=l2, num_steps=num_steps)
        holdout_top1[float(l2)] = _accuracies(clf, train_features[hold], train_labels[hold])[0]
        preemption.poll_pass()  # between fits: a SIGTERM of a multi-process run stops here
    best_acc = max(holdout_top1.values())
    best_l2 = max(l2 for l2, acc in holdout_top1.items() if acc == best_acc)

    clf = train_linear_classifier(train_features, train_labels, num_classes=num_classes,
                                  l2=best_l2, num_steps=num_steps)
    top1, top5 = _accuracies(clf, test_features, test_labels)
    return {"top1": top1, "top5": top5, "l2": best_l2, "holdout_top1": holdout_top1}
