"""AET, AutoEncoding Transformations (Zhang, Qi, Wang, Luo, CVPR 2019), AET-affine, as SSL++ uses
it (Chen et al., seed 002): regress the parameters of a random transformation from the features of
an image and of its transformed copy.

On device, per image of the augmented view:
  - A random affine transformation, AET's CIFAR-10 family (Sec. 4.1.1): rotation θ ~ U[−180°, 180°],
    translation ~ U[−0.2, 0.2] of the image's side in each direction, scale s ~ U[0.7, 1.3], shear
    φ ~ U[−30°, 30°] (along x). In coordinates normalised to [−1, 1] about the image centre (pixel
    centres at ±(1 − 1/size)), the transformation maps an input point u to
        A·u + t,  A = s·R(θ)·Sh(φ),  R = [[cos θ, −sin θ], [sin θ, cos θ]],  Sh = [[1, tan φ], [0, 1]],
    t = 2·(translation fraction) (x right, y down, so positive θ turns clockwise on screen).
  - The warp (`warp`): output pixel v samples the input at A⁻¹(v − t), bilinear, black outside
    (PIL's default fill, which AET's code uses), computed on the sRGB pixels then normalised again.
  - Two branches with shared weights (one encoder call on both images: BatchNorm statistics over
    the original and the transformed batch together) -> pooled features, concatenated [N, 2D]
    (AET: block4 maps concatenated and average-pooled, the same thing) -> head V1, one linear
    layer, to the 6 free entries of the 3x3 matrix M = [[A, t], [0, 0, 1]].
  - Loss: AET's ℓ = ½‖M(θ) − M(θ̂)‖² over those entries, batch mean (ssl_jax.losses.proxy.aet).
  AET-project (random corner shifts of a homography) is not implemented.

Features (the probe, kNN, and where SSL++'s V2 would attach): the pooled features of the original
image's branch (SSL++ leaves the choice open; the untransformed image is what evaluation sees).

Config section `aet`: rotation (degrees, 180), translation (fraction of the side, 0.2), scale
((0.7, 1.3)), shear (degrees, 30), and the base keys (ssl_jax.methods.proxy_task).
"""
import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from ssl_jax.losses import proxy as proxy_losses
from ssl_jax.methods.proxy_task import ProxyTask
from ssl_jax.models import build_head

NUM_PARAMS = 6  # the free entries of an affine 3x3 matrix


def affine_matrix(angle, shift, scale, shear) -> jax.Array:
    """[..., 2, 3] matrices [A | t] in normalised coordinates from angles θ (radians) [...],
    translations t [..., 2], scales [...], shears φ (radians) [...] (module docstring)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    k = jnp.tan(shear)
    # A = scale · R(θ) · [[1, k], [0, 1]]
    a = scale[..., None, None] * jnp.stack([jnp.stack([c, c * k - s], -1), jnp.stack([s, s * k + c], -1)], -2)
    return jnp.concatenate([a, shift[..., :, None]], axis=-1)


def sample_affine_params(rng: jax.Array, n: int, rotation: float, translation: float, scale: tuple,
                         shear: float) -> dict:
    """n draws of AET's affine family, uniform in each range (rotation and shear in degrees, given
    back in radians; translation a fraction of the side, given back in normalised units, 2x):
    {'angle', 'shift' [n, 2], 'scale', 'shear'}, the arguments of `affine_matrix`."""
    u = jax.random.uniform(rng, (n, 5), jnp.float32)
    return {"angle": math.radians(rotation) * (2 * u[:, 0] - 1),
            "shift": 2.0 * translation * (2 * u[:, 1:3] - 1),  # a fraction f of the side is 2f in [−1, 1] units
            "scale": scale[0] + (scale[1] - scale[0]) * u[:, 3],
            "shear": math.radians(shear) * (2 * u[:, 4] - 1)}


def sample_affine(rng: jax.Array, n: int, rotation: float, translation: float, scale: tuple,
                  shear: float) -> jax.Array:
    """[n, 2, 3] random matrices of AET's affine family (`sample_affine_params`)."""
    return affine_matrix(**sample_affine_params(rng, n, rotation, translation, scale, shear))


def warp(images: jax.Array, matrices: jax.Array, cval: float = 0.0) -> jax.Array:
    """images [N, H, W, C] transformed by matrices [N, 2, 3] (input -> output, normalised
    coordinates): output pixel v = the bilinear sample of the input at A⁻¹(v − t), `cval` where a
    sample's neighbours fall outside (jax.scipy.ndimage.map_coordinates, order 1, mode 'constant')."""
    n, h, w, c = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Pixel centre (i, j) <-> normalised (x, y) = ((j − (W−1)/2)/(W/2), (i − (H−1)/2)/(H/2)).
    v = jnp.stack([(cols - (w - 1) / 2) / (w / 2), (rows - (h - 1) / 2) / (h / 2)], -1)  # [H, W, 2]
    a_inv = jnp.linalg.inv(matrices[:, :, :2])
    src = jnp.einsum("nij,nhwj->nhwi", a_inv, v[None] - matrices[:, None, None, :, 2])
    src_cols = src[..., 0] * (w / 2) + (w - 1) / 2
    src_rows = src[..., 1] * (h / 2) + (h - 1) / 2

    def one(image, r, q):  # image [H, W, C]; r, q [H, W]
        return jax.vmap(lambda ch: map_coordinates(ch, [r, q], order=1, mode="constant", cval=cval),
                        in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images.astype(jnp.float32), src_rows, src_cols)


class AET(ProxyTask):
    name = "aet"

    def build_decoder(self):
        return build_head(dict(hidden_dim=0, output_dim=NUM_PARAMS, num_layers=1, hidden_bn=False,
                               output_bn="none", output_bias=True))

    def decoder_input(self, pooled, feature_map):
        return pooled

    def head_init_input(self, head_in):
        return jnp.concatenate([head_in, head_in], axis=-1)

    def transformed(self, x, rng):
        """(transformed images, normalised like x; their matrices [N, 2, 3])."""
        matrices = sample_affine(rng, x.shape[0], float(self.cfg.rotation), float(self.cfg.translation),
                                 tuple(self.cfg.scale), float(self.cfg.shear))
        return self.normalise(warp(self.pixels(x), matrices, cval=0.0)), matrices

    def task(self, params, batch_stats, x, rng, method_state, step):
        del method_state, step
        x = x.astype(jnp.float32)
        xt, matrices = self.transformed(x, jax.random.fold_in(rng, 2))
        n = x.shape[0]
        both = jnp.stack([x, xt], axis=1).reshape((2 * n,) + x.shape[1:])  # example-major: shards as x
        pooled, _, enc_stats = self.encode(params, batch_stats, both, rng)
        pooled = pooled.reshape(n, 2, -1)
        pred, head_stats = self.decode(params, batch_stats, pooled.reshape(n, -1))
        target = matrices.reshape(n, NUM_PARAMS)
        loss = proxy_losses.aet(pred, target)
        return loss, {"aet_param_mse": jnp.mean((pred - target) ** 2)}, pooled[:, 0], \
            {"encoder": enc_stats, "decoder": head_stats}, {}
