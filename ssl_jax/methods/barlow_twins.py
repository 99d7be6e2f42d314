"""Barlow Twins (Zbontar et al., ICML 2021).

encoder -> projector (8192-8192-8192, last layer without bias) on both views; loss
barlow_twins(z1, z2, λ=0.0051): the cross-correlation of the batch-standardised
embeddings is pushed to the identity. Under jax.jit with the batch sharded, the
standardisation statistics and C = z1ᵀz2/N are over the global batch (the authors
all-reduce C across GPUs). Per-view BN in the projector, as each view is forwarded alone
in the authors' code.
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class BarlowTwins(JointEmbeddingMethod):
    """Config section `barlow_twins`: projector, lambd."""

    name = "barlow_twins"

    def objective(self, out, target, method_state, rng, step, params):
        z = out["z"]
        return losses.barlow_twins(z[0], z[1], lambd=self.cfg.lambd), {}, {}
