"""Optimisers (LARS, SGD, AdamW) and schedules, all optax.

Every schedule is a pure function of the integer step so it can be evaluated
inside the jitted train step, which makes resuming from a checkpoint exact.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

# (path, param) -> True when the param is excluded from weight decay and LARS
# adaptation. `path` is a tuple of str keys, e.g. ('encoder', 'stem_bn', 'scale').
ExcludeFn = Callable[[Tuple[str, ...], Any], bool]


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------

def warmup_cosine_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                           end_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 (step 0) to ``peak_lr`` (step ``warmup_steps``),
    then cosine decay to ``end_lr`` at ``total_steps``; flat at ``end_lr`` after.
    """
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"Need 0 <= warmup_steps <= total_steps, got warmup_steps="
                         f"{warmup_steps}, total_steps={total_steps}.")
    peak_lr, end_lr = float(peak_lr), float(end_lr)
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


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


def ema_tau_schedule(tau_base: float, total_steps: int) -> optax.Schedule:
    """BYOL target EMA rate τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2.

    τ_0 = τ_base, τ_K = 1 (and 1 after K).
    """
    return _cosine_between(tau_base, 1.0, total_steps)


def momentum_schedule(base: float, total_steps: int, schedule: str = "cosine") -> optax.Schedule:
    """EMA rate of a momentum target: 'cosine' (BYOL, MoCo v3: base -> 1, see
    ema_tau_schedule) or 'constant' (MoCo v2: m = base throughout)."""
    if schedule == "cosine":
        return ema_tau_schedule(base, total_steps)
    if schedule == "constant":
        return lambda step: jnp.asarray(base, jnp.float32)
    raise ValueError(f"Unknown momentum schedule {schedule!r}; valid: 'cosine', 'constant'.")


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


def step_decay_schedule(peak_lr: float, warmup_steps: int, boundaries: Sequence[int],
                        factor: float) -> optax.Schedule:
    """Linear warm-up to ``peak_lr`` then ×``factor`` at each step in ``boundaries``
    (MoCo's linear evaluation: ×0.1 at epochs 60 and 80; W-MSE: ×0.2 50 and 25 epochs
    before the end)."""
    peak_lr = float(peak_lr)
    bounds = jnp.asarray(sorted(int(b) for b in boundaries) or [2 ** 30], jnp.float32)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        decayed = peak_lr * factor ** jnp.sum(step >= bounds)
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


class CountState(NamedTuple):
    count: jax.Array


def add_scheduled_weight_decay(schedule: optax.Schedule, mask: Callable[[Any], Any]
                               ) -> optax.GradientTransformation:
    """updates + wd(step)·params for the params selected by `mask` (DINO's weight decay
    rising 0.04 -> 0.4 on a cosine)."""

    def init_fn(params):
        del params
        return CountState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        wd = schedule(state.count)
        keep = mask(updates)
        updates = jax.tree.map(lambda u, p, k: u + wd * p if k else u, updates, params, keep)
        return updates, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


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
_MISSING = object()


def _get(cfg: Any, key: str, default: Any = _MISSING) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    if value is _MISSING:
        raise ValueError(f"Optimizer config is missing required key {key!r}; add "
                         f"config.optimizer.{key}.")
    return value


def build_optimizer(opt_cfg: Any, *, global_batch_size: int, steps_per_epoch: int,
                    num_epochs: float) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds ``(optimizer, lr_schedule)`` from a config (dict or ConfigDict).

    Keys: ``name`` ('lars' | 'sgd' | 'adam' | 'adamw'), ``base_lr``, ``lr_scaling``
    ('linear' | 'sqrt' | 'none', default 'linear'), ``weight_decay`` (default 0),
    ``momentum`` (sgd/lars, default 0.9), ``nesterov`` (sgd/lars, default False),
    ``trust_coefficient`` (lars, default 1e-3), ``b1``/``b2`` (adam/adamw, defaults
    0.9/0.999), ``warmup_epochs`` (float, default 0), ``exclude_bias_and_bn_from_wd``
    (default True: params with ndim <= 1 get no weight decay and, for LARS, no
    trust-ratio adaptation), ``decay`` ('cosine' | 'steps', default 'cosine'),
    ``end_lr_factor`` (cosine: final LR as a fraction of the peak, default 0),
    ``decay_epochs`` / ``decay_factor`` (steps: LR ×factor at each of these epochs;
    a negative epoch counts from the end), ``constant_lr_modules`` (top-level param
    names trained at the peak LR throughout, default none) and
    ``bias_and_bn_lr_factor`` (LR multiplier of 1-D params, default 1) and
    ``frozen_params`` ('/'-joined path prefixes, e.g. 'encoder/patch_embed', whose
    parameters are never updated: no gradient step, no weight decay; MoCo v3's frozen
    random patch projection), ``freeze_epochs`` (dict path prefix -> epochs during which
    that subtree is not updated: SwAV's prototypes, DINO's last layer),
    ``weight_decay_end`` (cosine from weight_decay to this over training; default: constant)
    and ``clip_grad_per_param`` (> 0: DINO's per-tensor gradient-norm clipping).

    Note on ``freeze_epochs`` with Adam(W): the gradient is zeroed while frozen, so the
    moment estimates stay 0 and the first updates after unfreezing use the global step's
    bias correction (PyTorch starts a per-parameter step count instead): up to
    1/sqrt(1 - b2^t)-scaled larger for a few steps. Exact for SGD and LARS.

    Warm-up is linear over round(warmup_epochs·steps_per_epoch) steps to
    scaled_lr(base_lr, global_batch_size, lr_scaling); training lasts
    round(steps_per_epoch·num_epochs) steps (num_epochs may be fractional).
    """
    name = _get(opt_cfg, "name")
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"Unknown optimizer name {name!r}; valid names: "
                         f"{', '.join(OPTIMIZER_NAMES)}.")
    peak = scaled_lr(float(_get(opt_cfg, "base_lr")), global_batch_size,
                     _get(opt_cfg, "lr_scaling", "linear"))
    # num_epochs may be fractional (a run given in steps passes num_steps / steps_per_epoch).
    total_steps = int(round(steps_per_epoch * num_epochs))
    warmup_steps = int(round(float(_get(opt_cfg, "warmup_epochs", 0.0)) * steps_per_epoch))
    if warmup_steps > total_steps:
        raise ValueError(f"optimizer.warmup_epochs={_get(opt_cfg, 'warmup_epochs')} gives "
                         f"{warmup_steps} warm-up steps, more than the {total_steps} "
                         f"training steps ({num_epochs} epochs x {steps_per_epoch}); "
                         f"lower warmup_epochs or train longer.")
    decay = _get(opt_cfg, "decay", "cosine")
    if decay == "cosine":
        schedule = warmup_cosine_schedule(peak, warmup_steps, total_steps,
                                          peak * float(_get(opt_cfg, "end_lr_factor", 0.0)))
    elif decay == "steps":
        bounds = [round((e if e >= 0 else num_epochs + e) * steps_per_epoch)
                  for e in _get(opt_cfg, "decay_epochs")]
        schedule = step_decay_schedule(peak, warmup_steps, bounds, float(_get(opt_cfg, "decay_factor")))
    else:
        raise ValueError(f"Unknown optimizer.decay {decay!r}; valid: 'cosine', 'steps'.")
    lr_transform = scale_by_param_lr(
        schedule, peak, tuple(_get(opt_cfg, "constant_lr_modules", ())),
        float(_get(opt_cfg, "bias_and_bn_lr_factor", 1.0)))
    wd = float(_get(opt_cfg, "weight_decay", 0.0))
    exclude = default_lars_exclude if _get(opt_cfg, "exclude_bias_and_bn_from_wd", True) else None
    momentum = float(_get(opt_cfg, "momentum", 0.9))
    nesterov = bool(_get(opt_cfg, "nesterov", False))
    b1, b2 = float(_get(opt_cfg, "b1", 0.9)), float(_get(opt_cfg, "b2", 0.999))
    wd_end = _get(opt_cfg, "weight_decay_end", None)
    if wd_end is not None and name != "adamw":
        raise ValueError("optimizer.weight_decay_end (a weight-decay schedule) is supported with "
                         f"name='adamw' only, not {name!r}; remove it or switch optimizer.")

    if name == "lars":
        tx = lars(schedule, wd, momentum=momentum, nesterov=nesterov, exclude_fn=exclude,
                  trust_coefficient=float(_get(opt_cfg, "trust_coefficient", 1e-3)),
                  lr_transform=lr_transform)
    elif name == "sgd":
        tx = sgd(schedule, wd, momentum=momentum, nesterov=nesterov, exclude_fn=exclude,
                 lr_transform=lr_transform)
    elif name == "adam":
        tx = adam(schedule, wd, b1=b1, b2=b2, exclude_fn=exclude, lr_transform=lr_transform)
    else:  # adamw: decoupled decay, scaled by the LR like optax.adamw
        decay = (optax.add_decayed_weights(wd, make_mask(exclude)) if wd_end is None else
                 add_scheduled_weight_decay(_cosine_between(wd, float(wd_end), total_steps),
                                            make_mask(exclude)))
        tx = optax.chain(optax.scale_by_adam(b1=b1, b2=b2), decay, lr_transform)

    clip = float(_get(opt_cfg, "clip_grad_per_param", 0.0))
    if clip > 0:
        tx = optax.chain(clip_by_param_norm(clip), tx)
    freeze_epochs = _get(opt_cfg, "freeze_epochs", None) or {}
    freeze_epochs = freeze_epochs.to_dict() if hasattr(freeze_epochs, "to_dict") else dict(freeze_epochs)
    if freeze_epochs:
        steps = {k: int(round(float(e) * steps_per_epoch)) for k, e in freeze_epochs.items()}

        def label(keys):
            name_ = "/".join(keys)
            return next((p for p in steps if name_ == p or name_.startswith(p + "/")), None)

        tx = optax.chain(zero_until(steps, label), tx, zero_until(steps, label))
    return freeze(tx, tuple(_get(opt_cfg, "frozen_params", ()))), schedule


def _cosine_between(start: float, end: float, total_steps: int) -> optax.Schedule:
    """start -> end on a half cosine over total_steps (DINO's weight-decay schedule)."""
    total = max(int(total_steps), 1)

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

    return schedule


def freeze(tx: optax.GradientTransformation, prefixes: Tuple[str, ...]) -> optax.GradientTransformation:
    """`tx` for every parameter except those whose '/'-joined path starts with one of
    `prefixes`, which get a zero update (and no optimizer state)."""
    if not prefixes:
        return tx

    def labels(tree):
        def label(path, _):
            name = "/".join(_path_keys(path))
            return "frozen" if any(name == p or name.startswith(p + "/") for p in prefixes) else "train"
        return jax.tree_util.tree_map_with_path(label, tree)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
