"""Heavy augmentations and directional SSL (DSSL: Bai, Yang, Zhang & Mei, CVPR 2022) as a wrapper
around a two-view method; the method itself knows nothing of them.

`build_method` calls `wrap(method, config.dssl)`. config.dssl.mode:
  'none'   the method as its paper has it (returned unwrapped),
  'heavy'  heavy_policy applied on top of the standard augmentation of each of its views, its own
           loss (the paper's "w/ T̂" rows): only the views the input pipeline makes change,
  'repro'  four standard views as two symmetric pairs (the paper's equal-compute baseline),
  'dssl'   two standard views v, v' and two harder views t̂(v), t̂'(v') made from them, with the
           directional objective of Eq. 6 (ssl_jax.losses.directional).
Weights of Eq. 6: alpha, beta, gamma, delta (DSSL: 1, 0, 1, 0); term_scale: s, the scale of each
D term (1/4: the paper's Algorithm 1; 1/2: its code). Defaults: ssl_jax.presets.base_config.

In the four-view modes ('repro', 'dssl') the method's own forward passes run once per pair of
views, (v, v') then (v̂, v̂'), so a harder view never shares BatchNorm statistics with a standard
view (a joint-BN method such as SimCLR normalises each pair together, as it does its two views).
What the four-view modes need to know of a method is its row in PAIRWISE.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.losses.directional import HV, SV
from ssl_jax.methods import common

MODES = ("none", "repro", "heavy", "dssl")


@dataclasses.dataclass(frozen=True)
class Pairwise:
    """How a two-view method enters Eq. 6.

    prediction: its online output used as a view's prediction p(·) ('p' or 'z'); a view's target
      representation y(·) is the momentum target's output where the target saw the view (BYOL,
      MoCo's keys), else the view's own online projection z under stop-gradient.
    cosine_pairs: its symmetric loss is s·[D(p(a), y(b)) + D(p(b), y(a))] (SimSiam, BYOL), so Eq. 6
      writes L_S in D terms with the per-term scale; otherwise L_S is its own objective on the pair.
    pure: its objective may be evaluated on two pairs in one step ('repro', β > 0): not when it
      updates state (MoCo v2 enqueues its keys).
    """
    prediction: str
    cosine_pairs: bool = False
    pure: bool = True


# The methods the four-view modes serve, by config.method: those with one loss per pair of views.
PAIRWISE = {
    "simsiam": Pairwise("p", cosine_pairs=True),
    "byol": Pairwise("p", cosine_pairs=True),
    "simclr": Pairwise("z"),
    "moco_v2": Pairwise("z", pure=False),
    "moco_v3": Pairwise("p"),
    "barlow_twins": Pairwise("z"),
    "vicreg": Pairwise("z"),
}


@dataclasses.dataclass(frozen=True)
class DirectionalSettings:
    """config.dssl, read strictly (every field, no other): see the module docstring."""
    mode: str
    heavy_policy: str
    alpha: float
    beta: float
    gamma: float
    delta: float
    term_scale: float

    @classmethod
    def from_config(cls, section) -> "DirectionalSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(section.keys()) - known, known - set(section.keys())
        if unknown:
            raise ValueError(f"Unknown keys {sorted(unknown)} in config.dssl; known: {sorted(known)}.")
        if missing:
            raise ValueError(f"config.dssl lacks {sorted(missing)}; start the config from "
                             "ssl_jax.presets.base_config, which sets every field.")
        settings = cls(**{k: section[k] for k in known})
        if settings.mode not in MODES:
            raise ValueError(f"config.dssl.mode={settings.mode!r} is not one of {MODES}; e.g. "
                             "--config.dssl.mode=dssl.")
        if settings.mode in ("heavy", "dssl") and settings.heavy_policy.strip().lower() in ("", "none"):
            raise ValueError(f"config.dssl.mode={settings.mode!r} needs a heavy augmentation; set "
                             "--config.dssl.heavy_policy, e.g. 'ra(2,5)+jigsaw(4)'.")
        return settings


def wrap(method, section):
    """`method` as config.dssl (`section`) asks: itself ('none'), with heavy views ('heavy'), or
    on four views ('repro', 'dssl')."""
    settings = DirectionalSettings.from_config(section)
    if settings.mode == "none":
        return method
    if settings.mode == "heavy":
        return HeavyViews(method, settings)
    return FourViews(method, settings)


class _Wrapper:
    """The wrapped method with a few attributes replaced; every other attribute (encoder, heads,
    cfg, init, after_update, evaluated_network, ...) is the method's own."""

    def __init__(self, method, settings: DirectionalSettings):
        self.method, self.settings = method, settings

    def __getattr__(self, name):
        if name in ("method", "settings"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.method, name)


class HeavyViews(_Wrapper):
    """'heavy': the heavy policy on top of every view; the method's loss unchanged."""

    @property
    def view_plan(self) -> tuple:
        return tuple((v, self.settings.heavy_policy) for v in range(self.method.num_views))


class FourViews(_Wrapper):
    """'repro' and 'dssl': a two-view method on four views (v, v', then v̂, v̂' or two more
    standard views), trained with Eq. 6."""

    num_views = 4

    def __init__(self, method, settings: DirectionalSettings):
        super().__init__(method, settings)
        self.pairwise = _checked_pairwise(method, settings)

    @property
    def view_plan(self) -> tuple:
        """For the input pipeline: per view, (the standard view it is made from, heavy policy or '')."""
        if self.settings.mode == "repro":
            return tuple((v, "") for v in range(4))
        return ((0, ""), (1, ""), (0, self.settings.heavy_policy), (1, self.settings.heavy_policy))

    def view_indices(self) -> tuple[tuple, tuple]:
        """(views the online network sees, views the momentum target sees) among the four."""
        m, s = self.method, self.settings
        online, target = m.view_indices()  # the method's own, among v and v'
        if s.mode == "repro":  # each pair seen as the method sees its pair
            return online + tuple(2 + v for v in online), target + tuple(2 + v for v in target)
        # Every harder view is predicted; the target sees them only if a term uses them as targets.
        hv_targets = bool(s.beta or s.delta) and m.target_views is None and m.momentum is not None
        return online + HV, target + (HV if hv_targets else ())

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """As the method's loss (same aux), with one forward pass of each network per pair of
        views and Eq. 6 for the objective."""
        m, views = self.method, batch["views"]
        online, target = self.view_indices()
        pairs = [(j, [v for v in online if v in pair], [v for v in target if v in pair])
                 for j, pair in enumerate((SV, HV))]
        out, stats = _merge([m.forward_online(params, batch_stats, [views[v] for v in on],
                                              common.drop_path_rng(rng, j)) for j, on, _ in pairs])
        target_out, target_stats = None, None
        if target:
            target_out, target_stats = _merge([m.forward_target(method_state["target"], [views[v] for v in tg])
                                               for _, _, tg in pairs if tg])
        loss, metrics, updates = self.directional_objective(out, target_out, online, target, method_state,
                                                            rng, step, params)
        return loss, m.loss_aux(out, stats, target_stats, method_state, updates, metrics)

    def directional_objective(self, out, target, online, target_idx, method_state, rng, step, params):
        """Eq. 6 over the four views from the online outputs `out` of the views `online` and the
        target's output of the views `target_idx`: (loss, metrics, method_state updates)."""
        pos_o = {v: i for i, v in enumerate(online)}
        pos_t = {v: i for i, v in enumerate(target_idx)}
        preds = [out[self.pairwise.prediction][pos_o[v]] if v in pos_o else None for v in range(4)]
        reps = [target[pos_t[v]] if v in pos_t else out["z"][pos_o[v]] if v in pos_o else None
                for v in range(4)]
        updates: dict = {}
        pair_loss = None
        if not self.pairwise.cosine_pairs:
            def pair_loss(a, b):
                """The method's own objective on the pair (a, b), from the outputs it computed for it."""
                pick = lambda x, pos: jnp.stack([x[pos[v]] for v in (a, b) if v in pos])
                sub_out = {k: pick(x, pos_o) for k, x in out.items()}
                sub_target = pick(target, pos_t) if target is not None else None
                loss, _, state_updates = self.method.objective(sub_out, sub_target, method_state, rng, step, params)
                updates.update(state_updates)
                return loss

        s = self.settings
        weights = (1.0, 1.0, 0.0, 0.0) if s.mode == "repro" else (s.alpha, s.beta, s.gamma, s.delta)
        loss, terms = losses.directional(preds, reps, alpha=weights[0], beta=weights[1], gamma=weights[2],
                                         delta=weights[3], term_scale=s.term_scale, pair_loss=pair_loss)
        return loss, {f"dssl_{k}": v for k, v in terms.items()}, updates


def _merge(results: list) -> tuple:
    """One (outputs, BN statistics) from the forward passes of the pairs: outputs concatenated
    along the view axis, statistics averaged."""
    if len(results) == 1:
        return results[0]
    outs, stats = zip(*results)
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs), common.tree_mean(stats)


def _checked_pairwise(method, settings: DirectionalSettings) -> Pairwise:
    """The method's PAIRWISE row, or a clear error where the four-view modes cannot serve it."""
    mode = settings.mode
    pairwise = PAIRWISE.get(method.name)
    if pairwise is None:
        raise ValueError(f"config.dssl.mode={mode!r} is not available for {method.name}: the four-view "
                         f"modes need a method with one loss per view pair ({', '.join(PAIRWISE)}). "
                         "Use --config.dssl.mode=heavy or none.")
    if method.num_views != 2:
        raise ValueError(f"config.dssl.mode={mode!r} builds four views from a two-view method, but "
                         f"{method.name}.num_views={method.num_views}; set it to 2 or use dssl.mode=heavy.")
    if not pairwise.pure and (mode == "repro" or settings.beta):
        raise ValueError(f"{method.name} updates its state in its loss (the key queue), so it takes one "
                         "standard pair per step: dssl.mode='repro' and dssl.beta > 0 are not "
                         "available for it; use dssl.mode='dssl' with beta=0.")
    online, _ = method.view_indices()
    if mode == "dssl" and settings.delta and set(SV) - set(online):
        raise ValueError(f"{method.name}'s online network sees only view(s) {list(online)} of v, v', so "
                         "it has no prediction of both standard views for the δ terms (HV→SV); set "
                         "dssl.delta=0.")
    return pairwise
