"""Optimisers (LARS, SGD, Adam, AdamW) as optax chains, built from config.optimizer.

The learning-rate and weight-decay schedules come from ssl_jax.schedules (pure functions of
the step, evaluated inside the jitted train step, so resuming is exact).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax import schedules

# (path, param) -> True when the param is excluded from weight decay and LARS
# adaptation. `path` is a tuple of str keys, e.g. ('encoder', 'stem_bn', 'scale').
ExcludeFn = Callable[[Tuple[str, ...], Any], bool]


# ----------------------------------------------------------------------------
# Learning-rate scaling
# ----------------------------------------------------------------------------

def scaled_lr(base_lr: float, global_batch_size: int, scaling: str = "linear") -> float:
    """Peak learning rate from a base one: ``base·B/256`` ('linear'),
    ``base·sqrt(B)`` ('sqrt', SimCLR's 0.075·√B) or ``base`` ('none')."""
    if scaling == "linear":
        return base_lr * global_batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch_size)
    if scaling == "none":
        return float(base_lr)
    raise ValueError(f"Unknown lr_scaling {scaling!r}; valid: 'linear', 'sqrt', 'none'.")


# ----------------------------------------------------------------------------
# Masks and LARS
# ----------------------------------------------------------------------------

def default_lars_exclude(path: Tuple[str, ...], param: Any) -> bool:
    """Default exclusion rule: every parameter with ndim <= 1.

    In the ResNets and MLP heads here those are exactly the biases and the
    BatchNorm scales/offsets (BYOL excludes these from weight decay and LARS
    adaptation). Kernels are >= 2-D. ``path`` is unused but available to
    custom rules.
    """
    del path
    return jnp.ndim(param) <= 1


def _path_keys(path) -> Tuple[str, ...]:
    keys = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                keys.append(str(getattr(k, attr)))
                break
        else:
            keys.append(str(k))
    return tuple(keys)


def make_mask(exclude_fn: ExcludeFn | None) -> Callable[[Any], Any]:
    """Returns ``params -> tree of bools``, True where the parameter is *not*
    excluded (i.e. gets weight decay / LARS adaptation). ``None`` excludes nothing.

    optax calls the mask on the updates tree at update time; that has the same
    structure and shapes as the params, so path/shape rules work unchanged.
    """
    def mask(tree):
        if exclude_fn is None:
            return jax.tree.map(lambda _: True, tree)
        return jax.tree_util.tree_map_with_path(
            lambda p, x: not bool(exclude_fn(_path_keys(p), x)), tree)

    return mask


def lars(learning_rate: optax.ScalarOrSchedule, weight_decay: float,
         momentum: float = 0.9, trust_coefficient: float = 1e-3, eps: float = 0.0,
         nesterov: bool = False,
         exclude_fn: ExcludeFn | None = default_lars_exclude,
         lr_transform: optax.GradientTransformation | None = None
         ) -> optax.GradientTransformation:
    """LARS as in BYOL (You et al., 2017; BYOL's reference implementation).

    Per parameter p with gradient g:
      if not excluded: g ← g + wd·p;  g ← g·η‖p‖/(‖g‖ + eps)  (ratio 1 if a norm is 0)
      v ← m·v + g;  update = −lr·v
    Excluded parameters (``exclude_fn``; default ndim <= 1: biases and BN
    scale/offset) get neither weight decay nor the trust ratio. The learning
    rate multiplies the momentum buffer (not the gradient inside it), as in
    BYOL. ``nesterov`` uses g + m·v instead of v. ``lr_transform`` replaces the
    final −lr scaling (per-parameter learning rates, see ``scale_by_param_lr``).

    optax.scale_by_trust_ratio implements exactly the trust-ratio line above.
    """
    mask = make_mask(exclude_fn)
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient,
                                                eps=eps), mask),
        optax.trace(decay=momentum, nesterov=nesterov),
        lr_transform or optax.scale_by_learning_rate(learning_rate),
    )


def sgd(learning_rate: optax.ScalarOrSchedule, weight_decay: float,
        momentum: float = 0.9, nesterov: bool = False,
        exclude_fn: ExcludeFn | None = default_lars_exclude,
        lr_transform: optax.GradientTransformation | None = None
        ) -> optax.GradientTransformation:
    """SGD with coupled weight decay, as PyTorch's SGD (dampening 0):
    g ← g + wd·p (not for excluded params);  v ← m·v + g;  update = −lr·v."""
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), make_mask(exclude_fn)),
        optax.trace(decay=momentum, nesterov=nesterov),
        lr_transform or optax.scale_by_learning_rate(learning_rate),
    )


def adam(learning_rate: optax.ScalarOrSchedule, weight_decay: float, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-8,
         exclude_fn: ExcludeFn | None = default_lars_exclude,
         lr_transform: optax.GradientTransformation | None = None
         ) -> optax.GradientTransformation:
    """Adam with *coupled* L2 regularisation, as PyTorch's Adam(weight_decay=wd) that W-MSE
    uses: g ← g + wd·p before the moment estimates (AdamW decouples it instead)."""
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), make_mask(exclude_fn)),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        lr_transform or optax.scale_by_learning_rate(learning_rate),
    )


class ParamLRState(NamedTuple):
    count: jax.Array


def scale_by_param_lr(schedule: optax.Schedule, peak_lr: float,
                      constant_lr_modules: Tuple[str, ...] = (),
                      bias_and_bn_lr_factor: float = 1.0) -> optax.GradientTransformation:
    """update ← −lr·update with a per-parameter learning rate:

    * parameters under a top-level key in ``constant_lr_modules`` use ``peak_lr`` at every
      step (SimSiam trains its predictor at a fixed LR, Chen & He 2021, Sec. 4.4);
    * 1-D parameters (biases, BN scale/offset) are multiplied by ``bias_and_bn_lr_factor``
      (Barlow Twins: 0.0048 for them against 0.2 for the weights);
    * every other parameter uses ``schedule(step)``.
    With the defaults this is optax.scale_by_learning_rate(schedule).
    """
    constant = tuple(constant_lr_modules)

    def init_fn(params):
        del params
        return ParamLRState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        lr = schedule(state.count)

        def scale(path, u):
            keys = _path_keys(path)
            rate = peak_lr if keys and keys[0] in constant else lr
            if jnp.ndim(u) <= 1:
                rate = rate * bias_and_bn_lr_factor
            return (-rate * u).astype(u.dtype)

        return (jax.tree_util.tree_map_with_path(scale, updates),
                ParamLRState(count=optax.safe_increment(state.count)))

    return optax.GradientTransformation(init_fn, update_fn)


class CountState(NamedTuple):
    count: jax.Array


def clip_by_param_norm(max_norm: float) -> optax.GradientTransformation:
    """Each parameter's gradient g ← g·min(1, max_norm/(‖g‖ + 1e-6)), tensor by tensor (DINO's
    `clip_gradients`, not optax's global-norm clipping)."""

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            return (g * jnp.minimum(1.0, max_norm / (norm + 1e-6))).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def zero_until(steps: dict, label: Callable[[Tuple[str, ...]], Any]) -> optax.GradientTransformation:
    """Zero the updates of the parameters whose path `label` maps to a key of `steps`
    while the step count is below steps[key] (SwAV's prototypes and DINO's last layer are
    frozen for the first epoch). Used around an optimizer: zeroing its input gradient keeps
    momentum buffers empty, zeroing its output also skips weight decay."""

    def init_fn(params):
        del params
        return CountState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params

        def gate(path, u):
            key = label(_path_keys(path))
            if key is None:
                return u
            return jnp.where(state.count < steps[key], jnp.zeros_like(u), u)

        return (jax.tree_util.tree_map_with_path(gate, updates),
                CountState(count=optax.safe_increment(state.count)))

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# From config
# ----------------------------------------------------------------------------

OPTIMIZER_NAMES = ("lars", "sgd", "adam", "adamw")

def build_optimizer(opt_cfg: ml_collections.ConfigDict, *, global_batch_size: int, steps_per_epoch: int,
                    num_epochs: float) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds ``(optimizer, lr_schedule)`` from a complete ``config.optimizer`` section (every
    key of ``presets.base_config().optimizer``, read strictly; their defaults live there):

    ``name`` ('lars' | 'sgd' | 'adam' | 'adamw'), ``base_lr``, ``lr_scaling`` ('linear' |
    'sqrt' | 'none'), ``weight_decay``, ``momentum`` and ``nesterov`` (sgd/lars),
    ``trust_coefficient`` (lars), ``b1``/``b2`` (adam/adamw), ``warmup_epochs`` (float),
    ``exclude_bias_and_bn_from_wd`` (params with ndim <= 1 get no weight decay and, for LARS,
    no trust-ratio adaptation), ``decay`` ('cosine' | 'steps'), ``end_lr_factor`` (cosine:
    final LR as a fraction of the peak), ``decay_epochs`` / ``decay_factor`` (steps: LR
    ×factor at each of these epochs; a negative epoch counts from the end),
    ``constant_lr_modules`` (top-level param names trained at the peak LR throughout),
    ``bias_and_bn_lr_factor`` (LR multiplier of 1-D params), ``frozen_params`` ('/'-joined path
    prefixes, e.g. 'encoder/patch_embed', whose parameters are never updated: MoCo v3's frozen
    random patch projection), ``freeze_epochs`` (dict path prefix -> epochs during which that
    subtree is not updated: SwAV's prototypes, DINO's last layer), ``weight_decay_end``
    (None, or a cosine from weight_decay to it over training; adamw only) and
    ``clip_grad_per_param`` (> 0: DINO's per-tensor gradient-norm clipping) and
    ``no_momentum_params`` (path prefixes trained with momentum 0, sgd/lars: DeepCluster's top layer).

    Note on ``freeze_epochs`` with Adam(W): the gradient is zeroed while frozen, so the
    moment estimates stay 0 and the first updates after unfreezing use the global step's
    bias correction (PyTorch starts a per-parameter step count instead): up to
    1/sqrt(1 - b2^t)-scaled larger for a few steps. Exact for SGD and LARS.

    Warm-up is linear over round(warmup_epochs·steps_per_epoch) steps to
    scaled_lr(base_lr, global_batch_size, lr_scaling); training lasts
    round(steps_per_epoch·num_epochs) steps (num_epochs may be fractional).
    """
    c = opt_cfg
    if c.name not in OPTIMIZER_NAMES:
        raise ValueError(f"Unknown optimizer name {c.name!r}; valid names: {', '.join(OPTIMIZER_NAMES)}.")
    peak = scaled_lr(float(c.base_lr), global_batch_size, c.lr_scaling)
    # num_epochs may be fractional (a run given in steps passes num_steps / steps_per_epoch).
    total_steps = int(round(steps_per_epoch * num_epochs))
    warmup_steps = int(round(float(c.warmup_epochs) * steps_per_epoch))
    if warmup_steps > total_steps:
        raise ValueError(f"optimizer.warmup_epochs={c.warmup_epochs} gives {warmup_steps} warm-up steps, "
                         f"more than the {total_steps} training steps ({num_epochs} epochs x "
                         f"{steps_per_epoch}); lower warmup_epochs or train longer.")
    if c.decay == "cosine":
        schedule = schedules.warmup_cosine(peak, warmup_steps, total_steps, peak * float(c.end_lr_factor))
    elif c.decay == "steps":
        bounds = [round((e if e >= 0 else num_epochs + e) * steps_per_epoch) for e in c.decay_epochs]
        schedule = schedules.warmup_step_decay(peak, warmup_steps, bounds, float(c.decay_factor))
    else:
        raise ValueError(f"Unknown optimizer.decay {c.decay!r}; valid: 'cosine', 'steps'.")
    lr_transform = scale_by_param_lr(schedule, peak, tuple(c.constant_lr_modules),
                                     float(c.bias_and_bn_lr_factor))
    wd = float(c.weight_decay)
    exclude = default_lars_exclude if c.exclude_bias_and_bn_from_wd else None
    if c.weight_decay_end is not None and c.name != "adamw":
        raise ValueError("optimizer.weight_decay_end (a weight-decay schedule) is supported with "
                         f"name='adamw' only, not {c.name!r}; remove it or switch optimizer.")

    if c.name in ("lars", "sgd"):
        def momentum_tx(momentum):
            if c.name == "lars":
                return lars(schedule, wd, momentum=momentum, nesterov=bool(c.nesterov), exclude_fn=exclude,
                            trust_coefficient=float(c.trust_coefficient), lr_transform=lr_transform)
            return sgd(schedule, wd, momentum=momentum, nesterov=bool(c.nesterov), exclude_fn=exclude,
                       lr_transform=lr_transform)
        tx = momentum_tx(float(c.momentum))
        if c.no_momentum_params:  # DeepCluster's top layer: plain SGD beside the momentum of the rest
            tx = by_prefix(tx, tuple(c.no_momentum_params), momentum_tx(0.0))
    elif c.no_momentum_params:
        raise ValueError(f"optimizer.no_momentum_params is for name='sgd' or 'lars', not {c.name!r}; "
                         "remove it or switch optimizer.")
    elif c.name == "adam":
        tx = adam(schedule, wd, b1=float(c.b1), b2=float(c.b2), exclude_fn=exclude, lr_transform=lr_transform)
    else:  # adamw: decoupled decay (optionally on a schedule), scaled by the LR like optax.adamw
        rate = wd if c.weight_decay_end is None else schedules.cosine_between(wd, float(c.weight_decay_end),
                                                                               total_steps)
        tx = optax.chain(optax.scale_by_adam(b1=float(c.b1), b2=float(c.b2)),
                         optax.add_decayed_weights(rate, make_mask(exclude)), lr_transform)

    if c.clip_grad_per_param > 0:
        tx = optax.chain(clip_by_param_norm(float(c.clip_grad_per_param)), tx)
    freeze_epochs = c.freeze_epochs.to_dict() if hasattr(c.freeze_epochs, "to_dict") else dict(c.freeze_epochs)
    if freeze_epochs:
        steps = {k: int(round(float(e) * steps_per_epoch)) for k, e in freeze_epochs.items()}

        def label(keys):
            name_ = "/".join(keys)
            return next((p for p in steps if name_ == p or name_.startswith(p + "/")), None)

        tx = optax.chain(zero_until(steps, label), tx, zero_until(steps, label))
    return freeze(tx, tuple(c.frozen_params)), schedule


def by_prefix(tx: optax.GradientTransformation, prefixes: Tuple[str, ...],
              tx_prefixed: optax.GradientTransformation,
              labels: Tuple[str, str] = ("rest", "prefixed")) -> optax.GradientTransformation:
    """`tx` for every parameter except those whose '/'-joined path starts with one of
    `prefixes`, which get `tx_prefixed` (each keeps its own state, under `labels` in the
    optimizer state)."""
    rest, prefixed = labels

    def label_tree(tree):
        def label(path, _):
            name = "/".join(_path_keys(path))
            return prefixed if any(name == p or name.startswith(p + "/") for p in prefixes) else rest
        return jax.tree_util.tree_map_with_path(label, tree)

    return optax.multi_transform({rest: tx, prefixed: tx_prefixed}, label_tree)


def freeze(tx: optax.GradientTransformation, prefixes: Tuple[str, ...]) -> optax.GradientTransformation:
    """`tx` for every parameter except those whose '/'-joined path starts with one of
    `prefixes`, which get a zero update (and no optimizer state)."""
    return by_prefix(tx, prefixes, optax.set_to_zero(), ("train", "frozen")) if prefixes else tx


def reset_state(optimizer: optax.GradientTransformation, opt_state: Any, params: Any,
                names: Tuple[str, ...]) -> Any:
    """`opt_state` with the state of the top-level parameter subtrees `names` re-initialised (a
    head reset: DeepCluster's new top layer starts without momentum); every other parameter and
    every counter (the LR schedule's step) keeps its state. A leaf belongs to a subtree when its
    path names it, so head names must not be reused as inner module names."""
    if not names:
        return opt_state
    fresh = optimizer.init(params)

    def pick(path, old, new):
        return new if any(k in names for k in _path_keys(path)) else old

    return jax.tree_util.tree_map_with_path(pick, opt_state, fresh)
