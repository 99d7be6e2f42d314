"""The shared skeleton of the joint-embedding methods (BYOL, SimCLR, MoCo, SimSiam, ...).

Each method is encoder -> projector [-> predictor] applied to the views, optionally a
momentum ("target" / "key") copy of encoder + projector updated as an EMA after each
optimizer step, and a pure loss from ssl_jax.losses on the resulting embeddings. A method
module only says which heads it has (its config section) and its `objective`; the
forward passes, the momentum target, the state layout and the EMA update live here once.

Method interface used by the train step (ssl_jax/train/step.py):
  init(rng, images) -> (params, batch_stats, method_state)
  loss(params, batch_stats, method_state, batch, rng, step) -> (loss, aux) with aux keys
      batch_stats, method_state, metrics, features (encoder output of view 0, for the probe)
  after_update(params, method_state, step) -> (params, method_state, metrics)

Heavy augmentations and DSSL (config section `dssl`, see `DirectionalSettings`): the same
method trained on four views per image with the directional objective of DSSL (Eq. 6,
ssl_jax.losses.directional), on four standard views ('repro'), or with heavy augmentations on
both of its views and its own loss ('heavy'). `view_plan` tells the input pipeline which views
to make.
"""
import abc
import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import losses
from ssl_jax import monitors
from ssl_jax.losses.directional import HV
from ssl_jax.methods import common
from ssl_jax.models import build_encoder, build_head
from ssl_jax import schedules



DSSL_MODES = ("none", "repro", "heavy", "dssl")
MONITOR_RANK_ROWS = 256  # rows of the projections whose effective rank is logged each step


@dataclasses.dataclass(frozen=True)
class DirectionalSettings:
    """config.dssl: how heavy augmentations enter training (DSSL, Bai et al. 2022).

    mode: 'none' (the method's own two views), 'heavy' (heavy_policy applied on top of the
      standard augmentation of every view, the method's symmetric loss: the paper's
      "w/ T̂" rows), 'repro' (four standard views as two symmetric pairs: the paper's equal-
      compute baseline), 'dssl' (two standard views v, v' and two harder views t̂(v), t̂'(v')
      derived from them, with the directional objective).
    heavy_policy: ssl_jax.data.heavy spec, e.g. 'ra(2,5)+jigsaw(4)' (the paper's default).
    alpha, beta, gamma, delta: the weights of Eq. 6 (DSSL: 1, 0, 1, 0).
    term_scale: s, the scale of each D term (1/4: the paper's Algorithm 1; 1/2: its code).
    """
    mode: str = "none"
    heavy_policy: str = "ra(2,5)+jigsaw(4)"
    alpha: float = 1.0
    beta: float = 0.0
    gamma: float = 1.0
    delta: float = 0.0
    term_scale: float = 0.25

    @classmethod
    def from_config(cls, section) -> "DirectionalSettings":
        if section is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(section.keys()) - known
        if unknown:
            raise ValueError(f"Unknown keys {sorted(unknown)} in config.dssl; known: {sorted(known)}.")
        settings = cls(**{k: section[k] for k in section.keys()})
        if settings.mode not in DSSL_MODES:
            raise ValueError(f"config.dssl.mode={settings.mode!r} is not one of {DSSL_MODES}; e.g. "
                             "--config.dssl.mode=dssl.")
        if settings.mode in ("heavy", "dssl") and settings.heavy_policy.strip().lower() in ("", "none"):
            raise ValueError(f"config.dssl.mode={settings.mode!r} needs a heavy augmentation; set "
                             "--config.dssl.heavy_policy, e.g. 'ra(2,5)+jigsaw(4)'.")
        return settings

    @property
    def four_views(self) -> bool:
        return self.mode in ("repro", "dssl")

    def view_plan(self, num_views: int) -> tuple:
        """For the input pipeline: per output view, (index of the standard view it is made from,
        heavy policy applied on top of it or '')."""
        if self.mode == "heavy":
            return tuple((v, self.heavy_policy) for v in range(num_views))
        if self.mode == "dssl":  # v, v', then t̂(v), t̂'(v') from the same standard views
            return ((0, ""), (1, ""), (0, self.heavy_policy), (1, self.heavy_policy))
        return tuple((v, "") for v in range(num_views))


def group_by_shape(views: Sequence[jax.Array]) -> list:
    """Consecutive views of equal shape stacked: [[V_g, N, H_g, W_g, C], ...]. Multi-crop
    batches hold global crops then local crops; each group is one encoder call."""
    groups: list = []
    for v in views:
        if groups and groups[-1][0].shape == v.shape:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [jnp.stack(g) for g in groups]


class JointEmbeddingMethod(abc.ABC):
    """Base class; subclasses set `name` (= their config section) and `objective`.

    Config section keys read here: projector (head config), predictor (head config or
    None), momentum (None, or dict(base=tau_0, schedule='cosine'|'constant')),
    per_view_bn (BatchNorm statistics per view, default True), num_views (default 2).

    Views of different resolutions (multi-crop) are encoded one resolution group at a
    time (BN statistics joint within a group, as the SwAV/DINO multi-crop wrapper; the
    running statistics are averaged over the groups); the heads then see all views.
    """

    name: str = ""
    # Which views the online network and the momentum target see (None: all). MoCo v2
    # forwards only the query view online and only the key view through the target.
    online_views: Optional[Sequence[int]] = None
    target_views: Optional[Sequence[int]] = None
    # The momentum target's copy of the online modules, and each head's output key.
    target_modules: Sequence[str] = ("encoder", "projector")
    head_outputs: Sequence[tuple[str, str]] = (("projector", "z"), ("predictor", "p"))
    # The weights the method's paper evaluates and exports: 'online' (BYOL, SimCLR, MoCo's
    # query encoder, ...) or 'target' (the momentum copy; DINO evaluates its teacher).
    evaluated_network: str = "online"
    # DSSL's four-view modes: the online output used as a view's prediction p(·) ('p' or
    # 'z'; None: the method does not support them), and whether its symmetric loss is
    # written as D terms with the per-term scale (SimSiam, BYOL) or is its own objective on
    # the pair (contrastive and redundancy-reduction methods).
    directional_prediction: Optional[str] = None
    symmetric_loss_is_cosine: bool = False
    # Whether `objective` may be evaluated on more than one pair per step ('repro', β > 0):
    # not when it updates state (MoCo v2's queue).
    objective_is_pure: bool = True

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int,
                 steps_per_epoch: Optional[int] = None):
        self.config = config
        self.cfg = config[self.name]
        self.total_steps = int(total_steps)
        # Epoch-based settings (queue start, frozen layers, temperature warm-up) use this.
        self.steps_per_epoch = int(steps_per_epoch or max(total_steps // max(int(config.num_epochs), 1), 1))
        self.encoder = build_encoder(config.model)
        self.heads = self.build_heads()
        momentum_cfg = self.cfg.get("momentum")
        self.momentum = (schedules.momentum(momentum_cfg["base"], total_steps, momentum_cfg["schedule"])
                         if momentum_cfg else None)
        self.per_view_bn = bool(self.cfg.get("per_view_bn", True))
        self.num_views = int(self.cfg.get("num_views", 2))
        self.dssl = DirectionalSettings.from_config(config.get("dssl"))
        if self.dssl.four_views:
            self._check_four_view_support()
            self.num_views = 4
        self.view_plan = self.dssl.view_plan(self.num_views)

    # ------------------------------------------------------------------ hooks
    def build_heads(self) -> dict:
        """name -> module for each head in `head_outputs` (absent heads are skipped)."""
        heads = {"projector": build_head(self.cfg.projector)}
        if self.cfg.get("predictor"):
            heads["predictor"] = build_head(self.cfg.predictor)
        return heads

    @abc.abstractmethod
    def objective(self, out: dict, target: Optional[jax.Array], method_state: dict,
                  rng: jax.Array, step: jax.Array, params: Any) -> tuple[jax.Array, dict, dict]:
        """(loss, metrics, method_state updates) from the online outputs `out`
        ({'h', 'z'[, 'p']}, each [V, N, D]) and the target's output [V_t, N, D]; `params`
        (the online parameters) for methods whose loss reads a layer directly. Every method
        defines it (abstract: the base class cannot be instantiated)."""

    def init_extra_state(self, rng: jax.Array) -> dict:
        """Method state beyond the momentum target (e.g. MoCo's queue)."""
        del rng
        return {}

    # ------------------------------------------------------------------ shared
    def _modules(self):
        """[(name, module, output key)] in forward order."""
        return [("encoder", self.encoder, "h")] + [
            (name, self.heads[name], key) for name, key in self.head_outputs if name in self.heads]

    def _module(self, name):
        return self.encoder if name == "encoder" else self.heads[name]

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, method_state) for a sample batch of images [N, H, W, C]."""
        keys = jax.random.split(rng, 4)
        n = images.shape[0]
        params, batch_stats = {}, {}
        x = images
        for key, (name, module, _) in zip(keys, self._modules()):
            # The heads only need their input shapes (no extra forward pass to compile).
            variables = module.init(key, x, train=False)
            params[name], batch_stats[name] = variables["params"], variables.get("batch_stats", {})
            dim = self.encoder.feature_dim if name == "encoder" else module.output_dim
            x = jnp.zeros((n, dim))
        state = self.init_extra_state(keys[3])
        if self.momentum is not None:
            # An exact copy with its own buffers (the train state is donated to the step).
            state["target"] = jax.tree.map(jnp.copy, {
                "params": {k: params[k] for k in self.target_modules},
                "batch_stats": {k: batch_stats[k] for k in self.target_modules}})
        return params, batch_stats, state

    @staticmethod
    def _select(views: Sequence[jax.Array], which: Optional[Sequence[int]]) -> tuple:
        return tuple(views) if which is None else tuple(views[i] for i in which)

    def _encode(self, params, batch_stats, views, rng=None):
        """Encoder on every view, one call per resolution group -> ([V, N, D], new stats).
        `rng`: stochastic depth of the encoder (ViT drop_path_rate), None for none."""
        outs, stats = [], []
        for i, group in enumerate(group_by_shape(views)):
            h, s = common.apply_views(self.encoder, params, batch_stats, group, self.per_view_bn,
                                      None if rng is None else jax.random.fold_in(rng, i))
            outs.append(h)
            stats.append(s)
        mean_stats = jax.tree.map(lambda *xs: sum(xs) / len(xs), *stats)
        return jnp.concatenate(outs, axis=0), mean_stats

    def forward_online(self, params, batch_stats, views, rng=None):
        """Online encoder and heads on the views (training mode): ({'h', 'z', ...}, stats).
        `rng` drives the encoder's stochastic depth (the target never gets one, as DINO's teacher)."""
        out, stats = {}, {}
        x, stats["encoder"] = self._encode(params["encoder"], batch_stats["encoder"], views, rng)
        out["h"] = x
        for name, module, key in self._modules()[1:]:
            x, stats[name] = common.apply_views(module, params[name], batch_stats[name], x,
                                                self.per_view_bn)
            out[key] = x
        return out, stats

    def forward_target(self, target, views):
        """Momentum target (training mode, as the authors' code) on the views; its output
        carries no gradient. Returns (last module's output [V_t, N, ...], new target stats)."""
        p, bs = target["params"], target["batch_stats"]
        stats = {}
        x, stats["encoder"] = self._encode(p["encoder"], bs["encoder"], views)
        for name in self.target_modules[1:]:
            x, stats[name] = common.apply_views(self._module(name), p[name], bs[name], x,
                                                self.per_view_bn)
        return jax.lax.stop_gradient(x), stats

    def _view_indices(self) -> tuple[tuple, tuple]:
        """(views the online network sees, views the momentum target sees), as view indices."""
        every = tuple(range(2 if self.dssl.four_views else self.num_views))  # the method's own views
        online = every if self.online_views is None else tuple(self.online_views)
        target = every if self.target_views is None else tuple(self.target_views)
        if self.dssl.four_views:
            if self.dssl.mode == "repro":  # two standard pairs, each seen as the method sees its pair
                online = online + tuple(2 + v for v in online)
                target = target + tuple(2 + v for v in target)
            else:  # every HV is predicted; the target sees HVs only if a term uses them as targets
                online = online + HV
                hv_targets = bool(self.dssl.beta or self.dssl.delta) and self.target_views is None
                target = target + (HV if hv_targets else ())
        return online, (target if self.momentum is not None else ())

    def _forward_pairs(self, forward, views: Sequence[jax.Array], indices: Sequence[int]):
        """`forward(views, group number)` on the views `indices`. In the four-view modes views 0-1 and 2-3 are two
        BatchNorm groups, so heavy views never share batch statistics with standard views
        (joint-BN methods such as SimCLR normalise each pair together, as with two views)."""
        groups = [[i for i in indices if i < 2], [i for i in indices if i >= 2]]
        groups = [g for g in groups if g] if self.dssl.four_views else [list(indices)]
        results = [forward([views[i] for i in g], j) for j, g in enumerate(groups)]
        if len(results) == 1:
            return results[0]
        outs, stats = zip(*results)
        concat = lambda *xs: jnp.concatenate(xs, axis=0)
        return jax.tree.map(concat, *outs), jax.tree.map(lambda *xs: sum(xs) / len(xs), *stats)

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """The method's loss of one batch; aux carries new BN stats, state, metrics, features."""
        views = tuple(batch["views"][:self.num_views])
        online_idx, target_idx = self._view_indices()
        drop_rng = jax.random.fold_in(rng, 1)  # stochastic depth; `rng` itself goes to the objective
        out, new_stats = self._forward_pairs(
            lambda vs, g: self.forward_online(params, batch_stats, vs, jax.random.fold_in(drop_rng, g)),
            views, online_idx)
        new_state = dict(method_state)
        target_z = None
        if self.momentum is not None:
            target = method_state["target"]
            target_z, target_stats = self._forward_pairs(lambda vs, g: self.forward_target(target, vs),
                                                         views, target_idx)
            new_state["target"] = {"params": target["params"], "batch_stats": target_stats}
        if self.dssl.four_views:
            loss, metrics, updates = self._directional_objective(
                out, target_z, online_idx, target_idx, method_state, rng, step, params)
        else:
            loss, metrics, updates = self.objective(out, target_z, method_state, rng, step, params)
        new_state.update(updates)
        # The collapse monitor of the online projections (DSSL and SimSiam §4.1): per-dimension
        # std of the normalised z, ~1/sqrt(D) when healthy, -> 0 under collapse; and their
        # effective rank (RankMe), which also shows a collapse to a few dimensions. The rank
        # is an SVD inside every step: of the first MONITOR_RANK_ROWS rows only, so its cost
        # does not grow with the global batch (DINO: 65536-d outputs).
        z0 = out["z"][0]
        metrics = dict(metrics, z_std=monitors.collapse_std(z0),
                       z_std_reference=1.0 / jnp.sqrt(jnp.float32(z0.shape[-1])),
                       z_effective_rank=monitors.effective_rank(jax.lax.stop_gradient(z0[:MONITOR_RANK_ROWS])))
        return loss, {"batch_stats": new_stats, "method_state": new_state, "metrics": metrics,
                      "features": out["h"][0]}

    def _directional_objective(self, out, target, online_idx, target_idx, method_state, rng, step, params):
        """Eq. 6 of DSSL over the four views (ssl_jax.losses.directional). A view's prediction
        is its online `directional_prediction` output; its target representation is the
        momentum target's output where the target saw it (BYOL, MoCo keys), else its own
        online projection z under stop-gradient (SimSiam, SimCLR, Barlow Twins, ...)."""
        pos_o = {v: i for i, v in enumerate(online_idx)}
        pos_t = {v: i for i, v in enumerate(target_idx)}
        preds = [out[self.directional_prediction][pos_o[v]] if v in pos_o else None for v in range(4)]
        reps = [target[pos_t[v]] if v in pos_t else out["z"][pos_o[v]] if v in pos_o else None
                for v in range(4)]
        updates: dict = {}
        pair_loss = None
        if not self.symmetric_loss_is_cosine:
            def pair_loss(a, b):
                """The method's own loss on the pair (a, b), on the outputs it computed for it."""
                pick = lambda x, pos: jnp.stack([x[pos[v]] for v in (a, b) if v in pos])
                sub_out = {k: pick(x, pos_o) for k, x in out.items()}
                sub_target = pick(target, pos_t) if target is not None else None
                loss, _, state_updates = self.objective(sub_out, sub_target, method_state, rng, step, params)
                updates.update(state_updates)
                return loss

        d = self.dssl
        weights = (1.0, 1.0, 0.0, 0.0) if d.mode == "repro" else (d.alpha, d.beta, d.gamma, d.delta)
        loss, terms = losses.directional(preds, reps, alpha=weights[0], beta=weights[1], gamma=weights[2],
                                         delta=weights[3], term_scale=d.term_scale, pair_loss=pair_loss)
        return loss, {f"dssl_{k}": v for k, v in terms.items()}, updates

    def _check_four_view_support(self) -> None:
        mode = self.dssl.mode
        if self.directional_prediction is None:
            raise ValueError(f"config.dssl.mode={mode!r} is not available for {self.name}: the four-view "
                             "modes need a method with one loss per view pair (simsiam, byol, simclr, "
                             "moco_v2, moco_v3, barlow_twins, vicreg). Use --config.dssl.mode=heavy or none.")
        if self.num_views != 2:
            raise ValueError(f"config.dssl.mode={mode!r} builds four views from a two-view method, but "
                             f"{self.name}.num_views={self.num_views}; set it to 2 or use dssl.mode=heavy.")
        if not self.objective_is_pure and (mode == "repro" or self.dssl.beta):
            raise ValueError(f"{self.name} updates its state in its loss (the key queue), so it takes one "
                             "standard pair per step: dssl.mode='repro' and dssl.beta > 0 are not "
                             "available for it; use dssl.mode='dssl' with beta=0.")

    def after_update(self, params, method_state, step):
        """After the optimizer step: EMA of the momentum target towards the freshly updated
        online network. Returns (params, method_state, metrics)."""
        if self.momentum is None:
            return params, method_state, {}
        tau = self.momentum(step)
        target = method_state["target"]
        online = {k: params[k] for k in self.target_modules}
        new_target = {"params": common.ema(target["params"], online, tau),
                      "batch_stats": target["batch_stats"]}
        return params, dict(method_state, target=new_target), {"ema_tau": tau}
