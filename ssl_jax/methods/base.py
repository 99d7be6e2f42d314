"""The shared skeleton of the joint-embedding methods (BYOL, SimCLR, MoCo, SimSiam, ...).

Each method is encoder -> projector [-> predictor] applied to the views, optionally a
momentum ("target" / "key") copy of encoder + projector updated as an EMA after each
optimizer step, and a pure loss from ssl_jax.losses on the resulting embeddings. The forward
passes, the momentum target, the state layout and the EMA update live here once; a method
says only what differs (see ssl_jax/methods/__init__.py for how to add one):

  name                       its config.method, config section and configs/<name>.py
  objective(...)             its loss from the online outputs and the target's output (required)
  head_outputs, build_heads  its heads and their output keys (default: projector 'z', predictor 'p')
  online_views, target_views which views each network sees (default: all)
  target_modules             what the momentum target copies (default: encoder and projector)
  evaluated_network          'online' or 'target': what its paper evaluates and exports
  init_extra_state           state beyond the target (a queue, a centre)
  init / after_update        extended with super() for extra parameters or updates (SwAV)

Config section keys read here (every one; configs/<method>.py sets them): projector,
predictor (head config or None; read by the default build_heads), momentum (None, or
dict(base=tau_0, schedule='cosine'|'constant')), per_view_bn (BatchNorm statistics per view),
num_views.

Method interface used by the train step (ssl_jax/train/step.py) and loop:
  init(rng, images) -> (params, batch_stats, method_state)
  loss(params, batch_stats, method_state, batch, rng, step) -> (loss, aux) with aux keys
      batch_stats, method_state, metrics, features (encoder output of view 0, for the probe)
  after_update(params, method_state, step) -> (params, method_state, metrics)
  num_views, view_plan (which views the input pipeline makes), encoder

Heavy augmentations and DSSL's four-view modes (config.dssl) wrap a method from outside:
ssl_jax.methods.dssl.
"""
import abc
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import monitors, parallel, schedules
from ssl_jax.methods import common
from ssl_jax.models import build_encoder, build_head

MONITOR_RANK_ROWS = 256  # rows of the projections whose effective rank is logged each step


def rank_sample(z: jax.Array, rows: int = MONITOR_RANK_ROWS) -> jax.Array:
    """The first `rows` rows of z [N, D] (all of them if N is smaller), as one array that every
    device holds whole: the input of the per-step effective-rank monitor.

    Picked by a product with a 0/1 selection matrix, not sliced: the contraction over the sharded
    batch axis is one all-reduce of the [rows, D] sample, and the SVD then runs on a replicated
    input. A slice left the sample split over the devices, and on TPU XLA partitioned the SVD's
    QR iterations over D (DINO's 65536 outputs, ViT-S/16 on v4-32: ~700 MB of all-gathers,
    collective-permutes and all-to-alls per step, 4x the gradient all-reduce). Exact:
    each entry is one value times 1 plus zeros, at HIGHEST precision.

    Under FSDP the projector's output axis D is split too, and the product leaves the sample
    split over D: on TPU XLA then partitioned the SVD's QR loops over it (DINO ViT-B, data 2 x
    fsdp 8 on v4-32: ~8 GiB of all-gathers per step). So when the step is traced under a mesh
    (ssl_jax.train.step.compile_step sets it), the sample is constrained to be replicated
    (parallel.constrain_in_step): one all-gather of [rows, D] before the SVD."""
    rows = min(rows, z.shape[0])
    select = (jnp.arange(rows)[:, None] == jnp.arange(z.shape[0])[None, :]).astype(z.dtype)
    return parallel.constrain_in_step(jnp.dot(select, z, precision=jax.lax.Precision.HIGHEST),
                                     parallel.REPLICATED)


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

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int,
                 steps_per_epoch: Optional[int] = None):
        self.config = config
        self.cfg = config[self.name]
        self.total_steps = int(total_steps)
        # Epoch-based settings (queue start, frozen layers, temperature warm-up) use this.
        self.steps_per_epoch = int(steps_per_epoch or max(total_steps // max(int(config.num_epochs), 1), 1))
        self.encoder = build_encoder(config.model)
        self.heads = self.build_heads()
        momentum = self.cfg.momentum
        self.momentum = (schedules.momentum(momentum.base, total_steps, momentum.schedule)
                         if momentum else None)
        self.per_view_bn = bool(self.cfg.per_view_bn)
        self.num_views = int(self.cfg.num_views)
        # For the input pipeline: per view, (the standard view it is made from, a heavy
        # augmentation policy on top of it or ''); ssl_jax.methods.dssl replaces it.
        self.view_plan = tuple((v, "") for v in range(self.num_views))

    # ------------------------------------------------------------------ hooks
    def build_heads(self) -> dict:
        """name -> module for each head in `head_outputs` (absent heads are skipped)."""
        heads = {"projector": build_head(self.cfg.projector)}
        if self.cfg.predictor:
            heads["predictor"] = build_head(self.cfg.predictor)
        return heads

    @abc.abstractmethod
    def objective(self, out: dict, target: Optional[jax.Array], method_state: dict,
                  rng: jax.Array, step: jax.Array, params: Any) -> tuple[jax.Array, dict, dict]:
        """(loss, metrics, method_state updates) from the online outputs `out`
        ({'h', 'z'[, 'p']}, each [V, N, D]) and the target's output [V_t, N, D] (None without a
        momentum target); `params` (the online parameters) for methods whose loss reads a layer
        directly. Every method defines it (abstract: the base class cannot be instantiated)."""

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

    def _encode(self, params, batch_stats, views, rng=None):
        """Encoder on every view, one call per resolution group -> ([V, N, D], new stats).
        `rng`: stochastic depth of the encoder (ViT drop_path_rate), None for none."""
        outs, stats = [], []
        for i, group in enumerate(group_by_shape(views)):
            h, s = common.apply_views(self.encoder, params, batch_stats, group, self.per_view_bn,
                                      None if rng is None else jax.random.fold_in(rng, i))
            outs.append(h)
            stats.append(s)
        return jnp.concatenate(outs, axis=0), common.tree_mean(stats)

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

    def view_indices(self) -> tuple[tuple, tuple]:
        """(views the online network sees, views the momentum target sees: none without one)."""
        every = tuple(range(self.num_views))
        online = every if self.online_views is None else tuple(self.online_views)
        target = every if self.target_views is None else tuple(self.target_views)
        return online, (target if self.momentum is not None else ())

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """The method's loss of one batch; aux carries new BN stats, state, metrics, features."""
        views = batch["views"]
        online, target = self.view_indices()
        out, stats = self.forward_online(params, batch_stats, [views[v] for v in online],
                                         common.drop_path_rng(rng, 0))
        target_out, target_stats = None, None
        if target:
            target_out, target_stats = self.forward_target(method_state["target"], [views[v] for v in target])
        loss, metrics, updates = self.objective(out, target_out, self.with_batch(method_state, batch), rng,
                                                step, params)
        return loss, self.loss_aux(out, stats, target_stats, method_state, updates, metrics)

    def with_batch(self, method_state: dict, batch: dict) -> dict:
        """The method state as `objective` sees it: methods whose targets are per-example state
        add the batch's dataset indices here (ssl_jax.methods.dataset_targets)."""
        del batch
        return method_state

    def loss_aux(self, out, stats, target_stats, method_state, updates, metrics) -> dict:
        """The aux of `loss` from the online outputs and new BN statistics, the target's new BN
        statistics (None without a target), the objective's state updates and metrics."""
        new_state = dict(method_state)
        if target_stats is not None:
            new_state["target"] = {"params": method_state["target"]["params"], "batch_stats": target_stats}
        new_state.update(updates)
        # The collapse monitor of the online projections (DSSL and SimSiam §4.1): per-dimension
        # std of the normalised z, ~1/sqrt(D) when healthy, -> 0 under collapse; and their
        # effective rank (RankMe), which also shows a collapse to a few dimensions. The rank
        # is an SVD inside every step: of the first MONITOR_RANK_ROWS rows only, so its cost
        # does not grow with the global batch (DINO: 65536-d outputs).
        z0 = out["z"][0]
        metrics = dict(metrics, z_std=monitors.collapse_std(z0),
                       z_std_reference=1.0 / jnp.sqrt(jnp.float32(z0.shape[-1])),
                       z_effective_rank=monitors.effective_rank(rank_sample(jax.lax.stop_gradient(z0))))
        return {"batch_stats": stats, "method_state": new_state, "metrics": metrics, "features": out["h"][0]}

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
