"""Context Encoder (Pathak et al., CVPR 2016) as SSL++ uses it (Chen et al., seed 002): recover
the missing central region of an image from its surroundings, with the L2 reconstruction loss
only (SSL++'s variant, and Pathak et al.'s own for representation learning: no adversarial term).

On device, per image of the augmented view (normalised pixels from the input pipeline):
  - The region: the central square of side round(mask_fraction · size) (0.5: the central
    quarter of the area, Pathak et al.'s 64 px of 128). The hole in the input is that square
    shrunk by `overlap` px on each side (Pathak's code: 4 px at 128 px; 1 px at 32 px here), and
    is filled with 0 in the normalised input space, i.e. the dataset's mean colour (config.data.mean;
    Pathak fills with the mean pixel).
  - Target: the whole central region (hole plus the visible overlap band), normalised pixels.
  - Head V1 (models.decoders.ContextDecoder): the region [N, side, side, 3] from the backbone's
    last feature map.
  - Loss: ssl_jax.losses.proxy.context_encoder, mean of w·(pred − target)² with w =
    `overlap_weight` (Pathak's code: 10) on the overlap band and 1 in the hole.

Features (the probe, kNN, and where SSL++'s V2 would attach): the pooled backbone features of
the masked image, the proxy task's input.

Config section `context_encoder`: mask_fraction (0.5), overlap (px), overlap_weight (10.0),
head_hidden (channels of the decoder's first layer), and the base keys (ssl_jax.methods.proxy_task).
"""
import jax.numpy as jnp
import numpy as np

from ssl_jax.losses import proxy as proxy_losses
from ssl_jax.methods.proxy_task import ProxyTask
from ssl_jax.models.decoders import ContextDecoder


def central_region(size: int, fraction: float, overlap: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(start, side, hole [size, size] bool, weight [side, side] of 1 in the hole and 0 on the
    overlap band) of the central square of an image of `size` px."""
    side = int(round(fraction * size))
    if not 0 < side <= size or not 0 <= 2 * overlap < side:
        raise ValueError(f"context_encoder: mask_fraction={fraction} and overlap={overlap} give no hole in a "
                         f"{size}-px image (side {side}); use 0 < mask_fraction <= 1 and 2·overlap < side.")
    start = (size - side) // 2
    inner = np.zeros((side, side), bool)
    inner[overlap:side - overlap, overlap:side - overlap] = True
    hole = np.zeros((size, size), bool)
    hole[start:start + side, start:start + side] = inner
    return start, side, hole, inner


class ContextEncoder(ProxyTask):
    name = "context_encoder"

    def region(self):
        return central_region(int(self.config.data.image_size), float(self.cfg.mask_fraction),
                              int(self.cfg.overlap))

    def build_decoder(self):
        return ContextDecoder(size=self.region()[1], channels=3, hidden=int(self.cfg.head_hidden))

    def decoder_input(self, pooled, feature_map):
        return feature_map

    def masked_input(self, x):
        """(images with the hole filled by 0 = the mean colour, the central region [N, side, side, 3])."""
        start, side, hole, _ = self.region()
        if x.shape[1:3] != hole.shape:
            raise ValueError(f"context_encoder: images are {x.shape[1]}x{x.shape[2]}, the config says "
                             f"data.image_size={hole.shape[0]}.")
        return jnp.where(jnp.asarray(hole)[None, :, :, None], 0.0, x), x[:, start:start + side, start:start + side]

    def head_init_images(self, images):
        return self.masked_input(images)[0]

    def task(self, params, batch_stats, x, rng, method_state, step):
        del method_state, step
        masked, target = self.masked_input(x.astype(jnp.float32))
        pooled, fmap, enc_stats = self.encode(params, batch_stats, masked, rng)
        pred, head_stats = self.decode(params, batch_stats, fmap)
        inner = self.region()[3]
        weight = np.where(inner, 1.0, float(self.cfg.overlap_weight)).astype(np.float32)
        loss = proxy_losses.context_encoder(pred, target, weight)
        hole_mse = jnp.mean(((pred - target) ** 2)[:, inner])  # the hole alone, unweighted
        return loss, {"context_hole_mse": hole_mse}, pooled, {"encoder": enc_stats, "decoder": head_stats}, {}
