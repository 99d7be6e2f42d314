"""RotNet (Gidaris et al., ICLR 2018): predict which of the rotations 0°, 90°, 180°, 270° was
applied to an image; the proxy task SSL++ (seed 002) calls 'Rotation'.

One augmented crop per image (the pipeline's single view), then on the devices: RotNet's
CIFAR translation (`pad_crop` px of black padding and a random crop back to the image size,
torchvision's RandomCrop(32, padding=4); 0 = off) and the four rotated copies
(`rotate_copies`, jnp.rot90: copy r is the crop turned r·90° counter-clockwise, as RotNet's
rotate_img). All four copies of every image are in the same batch (RotNet's data loader stacks
them), and the encoder sees them in one call with BatchNorm statistics over all 4·N copies
jointly (config `per_view_bn` False; per-view statistics would tell the network which copy is
which). The rotation head (V₁) is a linear classifier on the pooled encoder features (RotNet's
NIN: global average pool of block 4 -> Linear(192, 4)); the loss is the mean 4-way
cross-entropy over the 4·N copies (ssl_jax.losses.rotation_cross_entropy). Metrics:
`rotation_top1` (accuracy over all copies).

Where SSL++'s semantic head V₂ attaches: ssl_jax.methods.sslpp wraps this method from outside
and reads the encoder's output h of the upright copy (the `features` of `loss`) or of all four
copies (`loss_and_outputs`), each with the image's pseudo-label.

Choices (the papers leave room):
  * Head init: flax's Dense (LeCun-normal kernel, zero bias); RotNet's Linear keeps PyTorch's
    default uniform kernel and zeroes the bias. A linear head on a BN-ReLU feature trains the
    same either way.
  * The translation fills with the normalised value of a black pixel, what torchvision's
    zero padding of the [0, 255] image becomes after Normalize.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.methods import common
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.losses.rotation import rotation_cross_entropy
from ssl_jax.models import build_head

NUM_ROTATIONS = 4


def rotate_copies(images: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [4, N, H, W, C]: copy r is every image rotated by r·90° counter-clockwise
    (np.rot90(image, r) on the (H, W) axes; r = 0 is the image itself). Square images only."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"rotate_copies: images must be square [N, H, H, C]; got {images.shape}.")
    return jnp.stack([jnp.rot90(images, r, axes=(1, 2)) for r in range(NUM_ROTATIONS)])


def pad_crop(images: jax.Array, rng: jax.Array, padding: int, fill: jax.Array) -> jax.Array:
    """torchvision's RandomCrop(size, padding) on a batch [N, H, W, C]: pad each side by
    `padding` with the per-channel value `fill` [C], then an H x W window at an offset drawn
    uniformly from {0..2·padding}² per image. The offsets are a function of `rng` alone, so the
    result does not depend on how the batch is sharded."""
    if padding <= 0:
        return images
    n, h, w, c = images.shape
    fill = jnp.asarray(fill, images.dtype).reshape(1, 1, 1, c)
    padded = jnp.pad(images - fill, ((0, 0), (padding, padding), (padding, padding), (0, 0))) + fill
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)
    crop = lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def rotation_objective(logits: jax.Array) -> tuple[jax.Array, dict]:
    """(L_s, metrics) of the rotation head's logits [4, N, 4] (copy, image, class): the
    4-way cross-entropy and `rotation_top1`, the accuracy over all 4·N copies."""
    loss = rotation_cross_entropy(logits)
    hits = jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0])[:, None]
    return loss, {"rotation_top1": jnp.mean(hits.astype(jnp.float32))}


class RotNet(JointEmbeddingMethod):
    """Config section `rotnet`: pad_crop (px of RotNet's random translation, 0 = none),
    num_views (1: the crop the rotations are made from), per_view_bn (False: BN over all four
    copies jointly, as RotNet), momentum (None), projector and predictor (None: the rotation
    head is built here)."""

    name = "rotnet"
    head_outputs = (("rotation_head", "z"),)

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        if self.num_views != 1:
            raise ValueError(f"rotnet.num_views={self.num_views}: RotNet rotates one crop per image; set "
                             "--config.rotnet.num_views=1 and one entry in config.data.views.")
        if self.momentum is not None:
            raise ValueError("rotnet.momentum must be None: RotNet has no momentum target.")
        self.pad = int(self.cfg.pad_crop)
        if self.pad < 0:
            raise ValueError(f"rotnet.pad_crop={self.pad} must be >= 0 (0: no translation).")
        mean, std = np.asarray(config.data.mean, np.float32), np.asarray(config.data.std, np.float32)
        self.black = -mean / std  # a black pixel after the pipeline's normalisation

    def build_heads(self):
        return {"rotation_head": build_head(dict(hidden_dim=0, output_dim=NUM_ROTATIONS, num_layers=1,
                                                 hidden_bn=False, output_bn="none", output_bias=True))}

    def init(self, rng, images):
        # The heads read the encoder's features (parallel heads, see forward_online).
        keys = jax.random.split(rng, 1 + len(self.heads))
        variables = {"encoder": self.encoder.init(keys[0], images, train=False)}
        h = jnp.zeros((images.shape[0], self.encoder.feature_dim))
        for key, name in zip(keys[1:], sorted(self.heads)):
            variables[name] = self.heads[name].init(key, h, train=False)
        params = {k: v["params"] for k, v in variables.items()}
        batch_stats = {k: v.get("batch_stats", {}) for k, v in variables.items()}
        return params, batch_stats, self.init_extra_state(keys[0])

    def forward_online(self, params, batch_stats, views, rng=None):
        """Encoder on the copies (one call: joint BN), then every head on its output h."""
        out, stats = {}, {}
        out["h"], stats["encoder"] = self._encode(params["encoder"], batch_stats["encoder"], views, rng)
        for name, key in self.head_outputs:
            out[key], stats[name] = common.apply_views(self.heads[name], params[name], batch_stats[name],
                                                       out["h"], self.per_view_bn)
        return out, stats

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        loss, aux, _ = self.loss_and_outputs(params, batch_stats, method_state, batch, rng, step)
        return loss, aux

    def loss_and_outputs(self, params, batch_stats, method_state, batch, rng, step):
        """`loss` and the online outputs of all four copies (SSL++'s V₂ on every copy reads out['h'])."""
        crops = pad_crop(batch["views"][0], jax.random.fold_in(rng, 3), self.pad, self.black)
        copies = rotate_copies(crops)
        out, stats = self.forward_online(params, batch_stats, list(copies), common.drop_path_rng(rng, 0))
        loss, metrics, updates = self.objective(out, None, method_state, rng, step, params)
        return loss, self.loss_aux(out, stats, None, method_state, updates, metrics), out

    def objective(self, out, target, method_state, rng, step, params):
        loss, metrics = rotation_objective(out["z"])
        return loss, metrics, {}

    def loss_aux(self, out, stats, target_stats, method_state, updates, metrics):
        # The collapse monitors read the encoder's features: the 4-d logits' rank says nothing.
        # features = out['h'][0], the unrotated copy, for the online probe.
        return super().loss_aux(dict(out, z=out["h"]), stats, target_stats, method_state, updates, metrics)
