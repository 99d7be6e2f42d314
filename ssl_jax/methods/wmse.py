"""W-MSE: Whitening for Self-Supervised Representation Learning (Ermolov et al., ICML 2021).

encoder -> projector (1024 hidden with BN -> 64/128) on d views (d = 4 in W-MSE 4, the
authors' and FUSSL's default; 2 also works); loss wmse: the embeddings of each view are
whitened (Cholesky of the covariance) in random sub-batches of w_size, then the
normalised MSE of every pair of views is averaged. The whitening is part of the loss (no
parameters, no running statistics), as in the authors' code (track_running_stats=False).

Choice: the projector sees all views as one batch (the authors' code concatenates the
encoder outputs of all views before the head), so its BN statistics are joint.
"""
from ssl_jax import losses
from ssl_jax.methods.base import JointEmbeddingMethod


class WMSE(JointEmbeddingMethod):
    """Config section `wmse`: projector, num_views, w_size, w_iter, w_eps."""

    name = "wmse"

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        b, w, d = config.global_batch_size, self.cfg.w_size, self.cfg.projector.output_dim
        if b % w or w <= d:
            raise ValueError(
                f"wmse.w_size={w} must divide global_batch_size={b} and exceed the embedding "
                f"size {d} (a smaller sub-batch has a singular covariance); set "
                "--config.wmse.w_size accordingly.")

    def objective(self, out, target, method_state, rng, step, params):
        loss = losses.wmse(out["z"], rng, w_size=self.cfg.w_size, w_iter=self.cfg.w_iter,
                           eps=self.cfg.w_eps)
        return loss, {}, {}
