"""SimSiam (Chen & He, CVPR 2021).

encoder -> projector (3 layers, BN on the output without affine parameters) -> predictor
(bottleneck 2048 -> 512 -> 2048); no momentum encoder, no negatives. Loss (Eq. 2):
½·simsiam(p1, sg(z2)) + ½·simsiam(p2, sg(z1)). The predictor is trained at a fixed LR
(optimizer.constant_lr_modules = ('predictor',), Sec. 4.4), the rest on a cosine.
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class SimSiam(JointEmbeddingMethod):
    """Config section `simsiam`: projector, predictor."""

    name = "simsiam"

    def objective(self, out, target, method_state, rng, step, params):
        z, p = out["z"], out["p"]
        return 0.5 * (losses.simsiam(p[0], z[1]) + losses.simsiam(p[1], z[0])), {}, {}
