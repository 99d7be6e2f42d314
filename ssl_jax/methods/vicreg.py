"""VICReg: Variance-Invariance-Covariance Regularization (Bardes et al., ICLR 2022).

encoder -> expander (8192-8192-8192) on both views; loss vicreg(z1, z2) with weights
25 / 25 / 1. Under jax.jit with the batch sharded, the variance and covariance terms are
over the global batch (the authors gather the embeddings of all GPUs first).
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class VICReg(JointEmbeddingMethod):
    """Config section `vicreg`: projector (the expander), sim_weight, var_weight, cov_weight."""

    name = "vicreg"

    def objective(self, out, target, method_state, rng, step, params):
        z = out["z"]
        loss = losses.vicreg(z[0], z[1], sim_weight=self.cfg.sim_weight,
                             var_weight=self.cfg.var_weight, cov_weight=self.cfg.cov_weight)
        return loss, {}, {}
