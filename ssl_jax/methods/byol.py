"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020).

Online network: encoder -> projector -> predictor; target network: encoder -> projector
whose weights are an EMA of the online ones (tau from tau_base to 1 on a cosine, a pure
function of the step). Loss: byol(q_theta(v), sg(z_xi(v'))) + byol(q_theta(v'), sg(z_xi(v))).

Choices where the paper leaves room:
- The target network runs in training mode (batch statistics), as in the authors' code;
  its BN running statistics come from its own forward passes, not from the EMA.
- Both views go through each network in one vmapped call with per-view BN statistics
  (see methods.common.apply_train_per_view).
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.models import MLPHead, build_encoder
from ssl_jax.train.optim import ema_tau_schedule


class BYOL:
    """The BYOL method: its networks, its loss, and its EMA target update."""

    name = "byol"

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
        cfg = config.byol
        self.encoder = build_encoder(config.model)
        self.projector = MLPHead(hidden_dim=cfg.projector_hidden_dim, output_dim=cfg.projection_dim)
        self.predictor = MLPHead(hidden_dim=cfg.predictor_hidden_dim, output_dim=cfg.projection_dim)
        self.tau = ema_tau_schedule(cfg.ema_tau_base, total_steps)

    def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, method_state) for a sample batch of images [N, H, W, C]."""
        k_enc, k_proj, k_pred = jax.random.split(rng, 3)
        n = images.shape[0]
        enc = self.encoder.init(k_enc, images, train=False)
        # The heads only need their input shapes (no extra forward pass to compile).
        proj = self.projector.init(k_proj, jnp.zeros((n, self.encoder.feature_dim)), train=False)
        pred = self.predictor.init(k_pred, jnp.zeros((n, self.projector.output_dim)), train=False)
        params = {"encoder": enc["params"], "projector": proj["params"], "predictor": pred["params"]}
        batch_stats = {"encoder": enc["batch_stats"], "projector": proj["batch_stats"],
                       "predictor": pred["batch_stats"]}
        # The target starts as an exact copy (own buffers: the state is donated to the step).
        target = jax.tree.map(jnp.copy, {"params": {k: params[k] for k in ("encoder", "projector")},
                                         "batch_stats": {k: batch_stats[k] for k in ("encoder", "projector")}})
        return params, batch_stats, {"target": target}

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """Symmetrised BYOL loss of one batch; aux carries new BN stats, metrics, features."""
        del rng, step  # BYOL's loss is deterministic given the (already augmented) views.
        views = common.stack_views(batch["views"][:2])
        h, enc_stats = common.apply_train_per_view(self.encoder, params["encoder"], batch_stats["encoder"], views)
        z, proj_stats = common.apply_train_per_view(self.projector, params["projector"], batch_stats["projector"], h)
        p, pred_stats = common.apply_train_per_view(self.predictor, params["predictor"], batch_stats["predictor"], z)

        target = method_state["target"]
        th, t_enc_stats = common.apply_train_per_view(
            self.encoder, target["params"]["encoder"], target["batch_stats"]["encoder"], views)
        tz, t_proj_stats = common.apply_train_per_view(
            self.projector, target["params"]["projector"], target["batch_stats"]["projector"], th)
        tz = jax.lax.stop_gradient(tz)

        loss = losses.byol(p[0], tz[1]) + losses.byol(p[1], tz[0])
        new_stats = {"encoder": enc_stats, "projector": proj_stats, "predictor": pred_stats}
        new_target = {"params": target["params"],
                      "batch_stats": {"encoder": t_enc_stats, "projector": t_proj_stats}}
        metrics = {
            # Per-dimension std of the normalised online projections: ~1/sqrt(D) when
            # healthy, -> 0 under collapse.
            "z_std": jnp.mean(jnp.std(losses.l2_normalize(z[0]), axis=0)),
        }
        return loss, {"batch_stats": new_stats, "method_state": {"target": new_target},
                      "metrics": metrics, "features": h[0]}

    def after_update(self, params, method_state, step):
        """EMA update of the target towards the freshly updated online network."""
        tau = self.tau(step)
        target = method_state["target"]
        online = {k: params[k] for k in ("encoder", "projector")}
        new_params = common.ema(target["params"], online, tau)
        return {"target": {"params": new_params, "batch_stats": target["batch_stats"]}}, {"ema_tau": tau}
