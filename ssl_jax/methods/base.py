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
  after_update(params, method_state, step) -> (method_state, metrics)
"""
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.models import build_encoder, build_head
from ssl_jax.train.optim import momentum_schedule

TARGET_MODULES = ("encoder", "projector")  # what the momentum target copies


class JointEmbeddingMethod:
    """Base class; subclasses set `name` (= their config section) and `objective`.

    Config section keys read here: projector (head config), predictor (head config or
    None), momentum (None, or dict(base=tau_0, schedule='cosine'|'constant')),
    per_view_bn (BatchNorm statistics per view, default True), num_views (default 2).
    """

    name: str = ""
    # Which views the online network and the momentum target see (None: all). MoCo v2
    # forwards only the query view online and only the key view through the target.
    online_views: Optional[Sequence[int]] = None
    target_views: Optional[Sequence[int]] = None

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
        self.config = config
        self.cfg = config[self.name]
        self.encoder = build_encoder(config.model)
        self.projector = build_head(self.cfg.projector)
        predictor_cfg = self.cfg.get("predictor")
        self.predictor = build_head(predictor_cfg) if predictor_cfg else None
        momentum_cfg = self.cfg.get("momentum")
        self.momentum = (momentum_schedule(momentum_cfg["base"], total_steps, momentum_cfg["schedule"])
                         if momentum_cfg else None)
        self.per_view_bn = bool(self.cfg.get("per_view_bn", True))
        self.num_views = int(self.cfg.get("num_views", 2))

    # ------------------------------------------------------------------ hooks
    def objective(self, out: dict, target: Optional[jax.Array], method_state: dict,
                  rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict, dict]:
        """(loss, metrics, method_state updates) from the online outputs `out`
        ({'h', 'z'[, 'p']}, each [V, N, D]) and the target projections [V_t, N, D]."""
        raise NotImplementedError

    def init_extra_state(self, rng: jax.Array) -> dict:
        """Method state beyond the momentum target (e.g. MoCo's queue)."""
        del rng
        return {}

    # ------------------------------------------------------------------ shared
    def _modules(self):
        mods = [("encoder", self.encoder), ("projector", self.projector)]
        return mods + ([("predictor", self.predictor)] if self.predictor is not None else [])

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, method_state) for a sample batch of images [N, H, W, C]."""
        keys = jax.random.split(rng, 4)
        n = images.shape[0]
        params, batch_stats = {}, {}
        x = images
        for key, (name, module) in zip(keys, self._modules()):
            # The heads only need their input shapes (no extra forward pass to compile).
            variables = module.init(key, x, train=False)
            params[name], batch_stats[name] = variables["params"], variables.get("batch_stats", {})
            dim = self.encoder.feature_dim if name == "encoder" else module.output_dim
            x = jnp.zeros((n, dim))
        state = self.init_extra_state(keys[3])
        if self.momentum is not None:
            # An exact copy with its own buffers (the train state is donated to the step).
            state["target"] = jax.tree.map(jnp.copy, {
                "params": {k: params[k] for k in TARGET_MODULES},
                "batch_stats": {k: batch_stats[k] for k in TARGET_MODULES}})
        return params, batch_stats, state

    @staticmethod
    def _select(views: jax.Array, which: Optional[Sequence[int]]) -> jax.Array:
        return views if which is None else jnp.stack([views[i] for i in which])

    def forward_online(self, params, batch_stats, views):
        """Online encoder/projector/predictor on views [V, N, H, W, C] (training mode)."""
        out, stats = {}, {}
        x = views
        for (name, module), key in zip(self._modules(), ("h", "z", "p")):
            x, stats[name] = common.apply_views(module, params[name], batch_stats[name], x,
                                                self.per_view_bn)
            out[key] = x
        return out, stats

    def forward_target(self, target, views):
        """Momentum target encoder + projector (training mode, as the authors' code);
        its outputs carry no gradient. Returns (projections, new target batch_stats)."""
        x, stats = views, {}
        for name in TARGET_MODULES:
            module = getattr(self, name)
            x, stats[name] = common.apply_views(module, target["params"][name],
                                                target["batch_stats"][name], x, self.per_view_bn)
        return jax.lax.stop_gradient(x), stats

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """The method's loss of one batch; aux carries new BN stats, state, metrics, features."""
        views = common.stack_views(batch["views"][:self.num_views])
        out, new_stats = self.forward_online(params, batch_stats, self._select(views, self.online_views))
        new_state = dict(method_state)
        target_z = None
        if self.momentum is not None:
            target = method_state["target"]
            target_z, target_stats = self.forward_target(target, self._select(views, self.target_views))
            new_state["target"] = {"params": target["params"], "batch_stats": target_stats}
        loss, metrics, updates = self.objective(out, target_z, method_state, rng, step)
        new_state.update(updates)
        # Per-dimension std of the normalised online projections: ~1/sqrt(D) when
        # healthy, -> 0 under collapse.
        metrics = dict(metrics, z_std=jnp.mean(jnp.std(losses.l2_normalize(out["z"][0]), axis=0)))
        return loss, {"batch_stats": new_stats, "method_state": new_state, "metrics": metrics,
                      "features": out["h"][0]}

    def after_update(self, params, method_state, step):
        """EMA of the momentum target towards the freshly updated online network."""
        if self.momentum is None:
            return method_state, {}
        tau = self.momentum(step)
        target = method_state["target"]
        online = {k: params[k] for k in TARGET_MODULES}
        new_target = {"params": common.ema(target["params"], online, tau),
                      "batch_stats": target["batch_stats"]}
        return dict(method_state, target=new_target), {"ema_tau": tau}
