"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020).

Online network: encoder -> projector -> predictor; target network: encoder -> projector
whose weights are an EMA of the online ones (tau from tau_base to 1 on a cosine, a pure
function of the step). Loss: byol(q_theta(v), sg(z_xi(v'))) + byol(q_theta(v'), sg(z_xi(v))).

Choices where the paper leaves room:
- The target network runs in training mode (batch statistics), as in the authors' code;
  its BN running statistics come from its own forward passes, not from the EMA.
- Both views go through each network in one call with per-view BN statistics
  (see methods.common.apply_views).
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class BYOL(JointEmbeddingMethod):
    """Config section `byol`: projector, predictor, momentum (base 0.996, cosine)."""

    name = "byol"

    def objective(self, out, target, method_state, rng, step, params):
        p = out["p"]
        return losses.byol(p[0], target[1]) + losses.byol(p[1], target[0]), {}, {}
