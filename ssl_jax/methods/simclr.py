"""SimCLR (Chen et al., ICML 2020; v2 head: Chen et al., NeurIPS 2020).

encoder -> projector (2 layers 2048 -> 128 in v1, 3 in v2) on both views; loss
nt_xent(z1, z2, T) over the global batch: under jax.jit with the batch sharded over
`data`, each device's rows are compared against all 2N embeddings (the SimCLR TPU code
gathers them with a cross-replica concat; here XLA inserts the all-gather).

Choice: the views are concatenated along the batch, so BatchNorm statistics (global BN,
as the paper requires) are over both views together, as in the authors' code.
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class SimCLR(JointEmbeddingMethod):
    """Config section `simclr`: projector, temperature, per_view_bn (False)."""

    name = "simclr"

    def objective(self, out, target, method_state, rng, step, params):
        z = out["z"]
        return losses.nt_xent(z[0], z[1], temperature=self.cfg.temperature), {}, {}
