"""CARL and CARP (Silva & Ramírez Rivera; T. S. Silva's thesis "Self-Supervised Methods for
Representation Learning of Visual Features", ch. 5 and 6).

CARL: encoder -> projector (BN) -> assigner, a linear layer of K prototypes without
normalisation or temperature; p = softmax(z·C); loss: carl = consistency of the two views'
assignments + λ_e · KL(batch-mean assignment ‖ uniform), per view. CARP: the assigner is a
2-layer MLP with BN, and each step the K prototypes are split into N_P random blocks of N_B
(one permutation per step from the step's key, so both views and every device share it);
loss: carp, CARL within each block, averaged over blocks.

λ_e decays linearly from `entropy_weight_start` (b) to `entropy_weight_end` (a) over
`entropy_decay_epochs` (E), then stays at a (Eq. 5.8). Choice: the epoch counter e is the
fractional epoch step / steps_per_epoch (the thesis's listing samples λ per iteration;
Eq. 5.8 is written per epoch), so λ is a smooth pure function of the step.
"""
import jax

from ssl_jax import losses, schedules
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.models import build_head


class CARL(JointEmbeddingMethod):
    """Config section `carl`: projector, assigner (head config: num_layers=1 for CARL's
    linear prototypes), entropy_weight_start, entropy_weight_end, entropy_decay_epochs."""

    name = "carl"
    head_outputs = (("projector", "z"), ("assigner", "p"))

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        self.entropy_weight = schedules.linear_ramp(
            self.cfg.entropy_weight_start, self.cfg.entropy_weight_end,
            int(round(self.cfg.entropy_decay_epochs * self.steps_per_epoch)))

    def build_heads(self):
        return {"projector": build_head(self.cfg.projector), "assigner": build_head(self.cfg.assigner)}

    def assignment_loss(self, p, weight, rng):
        return losses.carl(p[0], p[1], weight)

    def objective(self, out, target, method_state, rng, step, params):
        weight = self.entropy_weight(step)
        loss, parts = self.assignment_loss(out["p"], weight, rng)
        return loss, dict(parts, entropy_weight=weight), {}


class CARP(CARL):
    """Config section `carp`: as CARL's plus num_blocks (N_P); the assigner is a 2-layer MLP."""

    name = "carp"

    def assignment_loss(self, p, weight, rng):
        # The step's key is the same on every device, so is the partition.
        perm = losses.carp_permutation(jax.random.fold_in(rng, 0), p.shape[-1])
        return losses.carp(p[0], p[1], perm, self.cfg.num_blocks, weight)
