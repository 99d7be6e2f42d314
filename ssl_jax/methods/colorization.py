"""Colorization (Zhang et al., ECCV 2016) as SSL++ uses it (Chen et al., seed 002): predict the
colour (ab of CIE Lab) of every pixel from its lightness L, as classification over quantised ab.

On device, per image of the augmented view (normalised sRGB from the input pipeline):
  1. sRGB -> Lab (ssl_jax.data.color, float32).
  2. Network input: the L channel. It meets the backbone's 3-channel stem as the grey sRGB image
     of the same lightness, (L, 0, 0) -> sRGB, normalised like every input: L is recovered exactly
     from it (L <-> luminance <-> grey value is one-to-one), and the backbone, its evaluation and
     its export stay those of any RGB encoder (evaluation feeds colour images, which the encoder
     has not seen in training; feed grey images to evaluate it on L alone).
  3. Targets: the ab of each cell of the backbone's last feature map (mean ab over the cell's
     pixels: the map is the output resolution, as Zhang et al. predict at 1/4 of the input's and
     downsample the ground truth), soft-encoded over the in-gamut ab bins (the 5 nearest, Gaussian
     σ = 5; ssl_jax.losses.proxy.soft_encode). The bins: ssl_jax.data.color.ab_bins (Q = 261; that
     module says why not 313).
  4. Head V1 (models.decoders.ColorizationHead): per-cell logits over the Q bins.
  5. Loss: Zhang et al.'s Eq. 2 with class rebalancing (λ = 0.5, prior smoothed by a σ = 5
     Gaussian; `rebalance`), ssl_jax.losses.proxy.colorization. SSL++ does not say whether it
     rebalances; Zhang et al.'s representation-learning model ("full" method) does, so it is on.
     The prior: Zhang et al. estimate it once on ImageNet's training set. Here it is the
     empirical distribution of the nearest bins of every target cell of the training batches seen
     so far, a running mean kept in the method state (step t's batch is included before the
     weights are computed, so step 0 never divides by an empty prior): after an epoch it is the
     training set's prior under the augmentation, with no extra data pass and exact on resume.

Features (the probe, kNN, and where SSL++'s V2 would attach): the pooled backbone features of
the L input (the grey image), as SSL++ feeds its semantic head the proxy task's own input.

Config section `colorization`: num_neighbors (5), sigma (5.0), rebalance (True), rebalance_lambda
(0.5), head_hidden (channels of the head's 3x3 conv), and the base keys (ssl_jax.methods.proxy_task).
"""
import jax
import jax.numpy as jnp

from ssl_jax.data import color
from ssl_jax.losses import proxy as proxy_losses
from ssl_jax.methods.proxy_task import ProxyTask
from ssl_jax.models.decoders import ColorizationHead


def cell_mean(x: jax.Array, size: int) -> jax.Array:
    """[N, H, W, C] -> [N, size, size, C], the mean over each (H/size) x (W/size) cell."""
    n, h, w, c = x.shape
    if h % size or w % size:
        raise ValueError(f"colorization: the image ({h}x{w}) is not a whole number of the feature map's "
                         f"{size}x{size} cells; use an image_size divisible by the backbone's stride.")
    return x.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))


class Colorization(ProxyTask):
    name = "colorization"

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        self.bins = jnp.asarray(color.ab_bins())

    def build_decoder(self):
        return ColorizationHead(num_bins=len(color.ab_bins()), hidden=int(self.cfg.head_hidden))

    def decoder_input(self, pooled, feature_map):
        return feature_map

    def init_extra_state(self, rng):
        del rng
        return {"ab_prior": jnp.zeros((len(color.ab_bins()),), jnp.float32)} if self.cfg.rebalance else {}

    def lightness_input(self, x):
        """(network input: the grey image of the L channel, normalised; ab [N, H, W, 2])."""
        lab = color.rgb_to_lab(self.pixels(x))
        grey = color.grey_of_lightness(lab[..., 0])[..., None]
        return self.normalise(jnp.broadcast_to(grey, x.shape)), lab[..., 1:]

    def head_init_images(self, images):
        return self.lightness_input(images)[0]

    def task(self, params, batch_stats, x, rng, method_state, step):
        inputs, ab = self.lightness_input(x)
        pooled, fmap, enc_stats = self.encode(params, batch_stats, inputs, rng)
        logits, head_stats = self.decode(params, batch_stats, fmap)
        targets = proxy_losses.soft_encode(cell_mean(ab, logits.shape[1]), self.bins,
                                           int(self.cfg.num_neighbors), float(self.cfg.sigma))
        nearest = jnp.argmax(targets, axis=-1)
        updates, weights = {}, None
        if self.cfg.rebalance:
            batch_hist = jnp.mean(jax.nn.one_hot(nearest, self.bins.shape[0], dtype=jnp.float32), axis=(0, 1, 2))
            t = step.astype(jnp.float32)
            prior = (method_state["ab_prior"] * t + batch_hist) / (t + 1.0)  # running mean over steps
            weights = proxy_losses.rebalance_weights(prior, self.bins, float(self.cfg.rebalance_lambda),
                                                     float(self.cfg.sigma))
            updates["ab_prior"] = prior
        loss = proxy_losses.colorization(logits, targets, weights)
        top1 = jnp.mean(jnp.argmax(logits, axis=-1) == nearest)
        return loss, {"colorization_bin_top1": top1}, pooled, {"encoder": enc_stats, "decoder": head_stats}, updates
