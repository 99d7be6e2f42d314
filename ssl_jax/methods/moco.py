"""MoCo v2 (Chen, Fan, Girshick & He, 2020) and MoCo v3 (Chen, Xie & He, ICCV 2021).

Both: a query network (encoder -> projector [-> predictor]) and a key network, the
momentum target (EMA of encoder + projector, methods.base), with info_nce.

MoCo v2: query = projector output of view 1, key = momentum projection of view 2;
negatives from a queue of K past keys held in the method state (so it is checkpointed
and survives resume); after each step the global batch of keys replaces the oldest
entries (K must be a multiple of the global batch). m = 0.999 constant, T = 0.2.
Choice: no shuffling BN. MoCo shuffles the key batch across GPUs because per-GPU BN
statistics let a query and its positive key share information through their common
sub-batch. Here BN statistics are over the global batch (the step is one SPMD program),
which SimCLR (Sec. 2.3) gives as the alternative fix for the same leak; solo-learn also
trains MoCo v2 without shuffling.

MoCo v3: symmetric info_nce(q1, k2) + info_nce(q2, k1) with in-batch keys of the global
batch (no queue), predictor on the query side, m cosine 0.99 -> 1. The authors multiply
each term by 2T (their loss is "2T · cross-entropy"); the factor is applied here, not in
info_nce.
"""

from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.methods.base import JointEmbeddingMethod


class MoCoV2(JointEmbeddingMethod):
    """Config section `moco_v2`: projector, momentum, queue_size, temperature."""

    name = "moco_v2"
    online_views = (0,)   # queries
    target_views = (1,)   # keys

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        k, b = self.cfg.queue_size, config.global_batch_size
        if k % b:
            raise ValueError(f"moco_v2.queue_size={k} is not a multiple of global_batch_size={b}; "
                             "MoCo replaces whole batches in its queue. Set --config.moco_v2.queue_size "
                             f"to a multiple of {b}.")

    def init_extra_state(self, rng):
        return {"queue": common.init_queue(rng, self.cfg.queue_size, self.cfg.projector.output_dim)}

    def objective(self, out, target, method_state, rng, step, params):
        queue = method_state["queue"]
        q, k = out["z"][0], target[0]
        loss = losses.info_nce(q, k, queue=queue["keys"], temperature=self.cfg.temperature)
        return loss, {}, {"queue": common.enqueue(queue, k)}


class MoCoV3(JointEmbeddingMethod):
    """Config section `moco_v3`: projector, predictor, momentum, temperature."""

    name = "moco_v3"

    def objective(self, out, target, method_state, rng, step, params):
        t = self.cfg.temperature
        p = out["p"]
        loss = losses.info_nce(p[0], target[1], temperature=t) + losses.info_nce(p[1], target[0], temperature=t)
        return 2.0 * t * loss, {}, {}
