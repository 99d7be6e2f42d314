"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020), with multi-crop.

encoder -> projector (2048 -> 128) -> L2-normalised embedding -> prototypes (K unit vectors,
re-normalised after every update). Codes: sinkhorn (ε = 0.05, 3 iterations) of the global
crops' prototype scores over the global batch, stop-gradient; loss: swav, every crop predicts
the codes of every other global crop (T = 0.1).

Queue (optional, `queue_length` > 0): from `queue_start_epoch` on, the embeddings of the
global crops of each step are pushed into a per-crop FIFO of `queue_length` rows held in
the method state (so it is checkpointed and survives resume); once it is full its scores
join the batch's in the Sinkhorn normalisation, and only the batch rows' codes are used, as
in the authors' code. The prototypes are frozen for the first epoch(s) with
optimizer.freeze_epochs = {'prototypes': 1}.
Choice: the encoder runs once per resolution with BN statistics joint over the crops of that
resolution, the heads once over all crops (the authors' multi-crop wrapper).
"""
import jax
import jax.numpy as jnp

from ssl_jax import losses, parallel
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.models import Prototypes, build_head, normalize_prototypes


class SwAV(JointEmbeddingMethod):
    """Config section `swav`: projector, num_prototypes, num_views, num_global_crops,
    temperature, sinkhorn_epsilon, sinkhorn_iters, queue_length, queue_start_epoch."""

    name = "swav"
    head_outputs = (("projector", "z"), ("prototypes", "p"))

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        q, b = self.cfg.queue_length, config.global_batch_size
        if q and q % b:
            raise ValueError(f"swav.queue_length={q} is not a multiple of global_batch_size={b}; "
                             f"set --config.swav.queue_length to a multiple of {b} (or 0: no queue).")
        self.queue_start_step = int(round(self.cfg.queue_start_epoch * self.steps_per_epoch))

    def build_heads(self):
        return {"projector": build_head(self.cfg.projector), "prototypes": Prototypes(self.cfg.num_prototypes)}

    def init(self, rng, images):
        params, batch_stats, state = super().init(rng, images)
        params["prototypes"] = normalize_prototypes(params["prototypes"])
        return params, batch_stats, state

    def init_extra_state(self, rng):
        if not self.cfg.queue_length:
            return {}
        shape = (self.cfg.num_global_crops, self.cfg.queue_length, self.cfg.projector.output_dim)
        return {"queue": {"embeddings": jnp.zeros(shape, jnp.float32), "count": jnp.zeros((), jnp.int32)}}

    def _codes(self, scores, queue_scores, use_queue):
        """Sinkhorn codes of one crop's batch scores [N, K], with the queue's scores [Q, K]
        prepended when `use_queue` (the queue is full)."""
        eps, iters = self.cfg.sinkhorn_epsilon, self.cfg.sinkhorn_iters
        if queue_scores is None:
            return losses.sinkhorn(scores, epsilon=eps, num_iters=iters)
        # One Sinkhorn per step: over queue + batch once the queue is full, else the batch. The
        # queue's rows and the batch's stay separate blocks, each split over the devices.
        return jax.lax.cond(
            use_queue,
            lambda: losses.sinkhorn_blocks([queue_scores, scores], epsilon=eps, num_iters=iters)[1],
            lambda: losses.sinkhorn(scores, epsilon=eps, num_iters=iters))

    def objective(self, out, target, method_state, rng, step, params):
        scores = out["p"]                                   # [V, N, K]
        emb = jax.lax.stop_gradient(losses.l2_normalize(out["z"]))
        a = self.cfg.num_global_crops
        kernel = jax.lax.stop_gradient(params["prototypes"]["kernel_layer"]["kernel"])
        queue = method_state.get("queue")
        codes = []
        for i in range(a):
            q_scores, use = None, None
            if queue is not None:
                # The queue's rows split over the devices like the batch's (each device scores
                # and normalises its share of the replicated queue): no row moves, none is
                # computed twice.
                q_scores = parallel.constrain_in_step(queue["embeddings"][i], parallel.BATCH_ROWS) @ kernel
                use = queue["count"] >= self.cfg.queue_length
            codes.append(self._codes(jax.lax.stop_gradient(scores[i]), q_scores, use))
        codes = jnp.stack(codes)
        loss = losses.swav(scores, codes, temperature=self.cfg.temperature)
        metrics = self._assignment_metrics(scores, codes)
        updates = {}
        if queue is not None:
            active = step >= self.queue_start_step
            n = scores.shape[1]
            # The batch's embeddings gathered once (the queue is replicated state): joined while
            # split, XLA moved them with all-to-alls and permutes on TPU.
            new_rows = parallel.constrain_in_step(emb[:a], parallel.REPLICATED)
            pushed = jnp.concatenate([new_rows, queue["embeddings"][:, :-n]], axis=1)
            updates["queue"] = {
                "embeddings": jnp.where(active, pushed, queue["embeddings"]),
                "count": jnp.where(active, jnp.minimum(queue["count"] + n, self.cfg.queue_length),
                                   queue["count"])}
        return loss, metrics, updates

    def _assignment_metrics(self, scores, codes):
        """How informative the assignments are (the uniform fixed point has both entropies at 1
        and agreement at chance, 1/K): mean entropy of the codes and of the predictions
        softmax(scores / T) of the same A global crops the codes [A, N, K] are of, each over
        log K, and how often the first two global crops of an image have the same most likely
        prototype."""
        log_k = jnp.log(jnp.float32(scores.shape[-1]))
        entropy = lambda p: jnp.mean(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)) / log_k
        global_scores = jax.lax.stop_gradient(scores[:codes.shape[0]]).astype(jnp.float32)
        probs = jax.nn.softmax(global_scores / self.cfg.temperature, -1)
        metrics = {"codes_entropy": entropy(codes), "predictions_entropy": entropy(probs)}
        if codes.shape[0] >= 2:
            same = jnp.argmax(codes[0], -1) == jnp.argmax(codes[1], -1)
            metrics["codes_agreement"] = jnp.mean(same.astype(jnp.float32))
        return metrics

    def after_update(self, params, method_state, step):
        params = dict(params, prototypes=normalize_prototypes(params["prototypes"]))
        return super().after_update(params, method_state, step)
