"""AET, AutoEncoding Transformations (Zhang, Qi, Wang, Luo, CVPR 2019), AET-affine and
AET-project, as SSL++ uses it (Chen et al., seed 002: "the affine and projective transformations",
M(θ) ∈ R^{3x3}): regress the parameters of a random transformation from the features of an image
and of its transformed copy.

On device, per image of the augmented view:
  - A random affine transformation, AET's CIFAR-10 family (Sec. 4.1.1): rotation θ ~ U[−180°, 180°],
    translation ~ U[−0.2, 0.2] of the image's side in each direction, scale s ~ U[0.7, 1.3], shear
    φ ~ U[−30°, 30°] (along x). In coordinates normalised to [−1, 1] about the image centre (pixel
    centres at ±(1 − 1/size)), the transformation maps an input point u to
        A·u + t,  A = s·R(θ)·Sh(φ),  R = [[cos θ, −sin θ], [sin θ, cos θ]],  Sh = [[1, tan φ], [0, 1]],
    t = 2·(translation fraction) (x right, y down, so positive θ turns clockwise on screen).
  - Or (aet.transform 'projective') a random homography, AET's AET-project family for CIFAR-10
    (AET Sec. 4.1.1, as recalled here, not in the seed-002 extraction, which gives no ranges: the
    four corners moved independently in x and y by up to ±0.125 of the side, after a scaling by
    U[0.8, 1.2] and a rotation by a random multiple of 90°; check against the AET paper):
    the image's corners (±1, ±1) go to R(k·90°)·s·c + δ, δ ~ U[−0.25, 0.25]² (0.125 of a side is
    0.25 normalised units), and H is the homography through those 4 correspondences
    (`homography_from_corners`), scaled so that H₃₃ = 1. Its 8 other entries are the target
    (the 6 affine entries in the same order, then H₃₁, H₃₂). Whether the corners are scaled and
    rotated about the centre is not stated: about the centre here (the image stays in view).
  - The warp (`warp`): output pixel v samples the input at M⁻¹(v) (the homogeneous point, divided
    by its last coordinate; for an affine M, A⁻¹(v − t)), bilinear, black outside (PIL's default
    fill, which AET's code uses), computed on the sRGB pixels then normalised again.
  - Two branches with shared weights (one encoder call on both images: BatchNorm statistics over
    the original and the transformed batch together) -> pooled features, concatenated [N, 2D]
    (AET: block4 maps concatenated and average-pooled, the same thing) -> head V1, one linear
    layer, to the 6 free entries of the 3x3 matrix M = [[A, t], [0, 0, 1]] (projective: 8).
  - Loss: AET's ℓ = ½‖M(θ) − M(θ̂)‖² over those entries, batch mean (ssl_jax.losses.proxy.aet).

Features (the probe, kNN, and where SSL++'s V2 would attach): the pooled features of the original
image's branch (SSL++ leaves the choice open; the untransformed image is what evaluation sees).

Config section `aet`: transform ('affine' or 'projective'); affine: rotation (degrees, 180),
translation (fraction of the side, 0.2), scale ((0.7, 1.3)), shear (degrees, 30); projective:
corner_shift (fraction of the side, 0.125), projective_scale ((0.8, 1.2)); and the base keys
(ssl_jax.methods.proxy_task). The transformation's key is fold_in(step rng, 2).
"""
import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from ssl_jax.losses import proxy as proxy_losses
from ssl_jax.methods.proxy_task import ProxyTask
from ssl_jax.models import build_head

TRANSFORMS = ("affine", "projective")
NUM_PARAMS = {"affine": 6, "projective": 8}  # the free entries of the 3x3 matrix
# The image's corners in normalised coordinates (x right, y down): top-left, top-right,
# bottom-right, bottom-left.
CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


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


def _quarter_turn(quarter_turns) -> jax.Array:
    """[..., 2, 2] rotations by quarter_turns·90° (exact entries; x right, y down, clockwise on screen)."""
    c = jnp.array([1.0, 0.0, -1.0, 0.0], jnp.float32)[quarter_turns % 4]
    s = jnp.array([0.0, 1.0, 0.0, -1.0], jnp.float32)[quarter_turns % 4]
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def homography_from_corners(src, dst) -> jax.Array:
    """[..., 3, 3] homographies H with H₃₃ = 1 that map the points src [..., 4, 2] to dst [..., 4, 2]
    (x' = (h₁₁x + h₁₂y + h₁₃)/(h₃₁x + h₃₂y + 1), y' likewise): each correspondence gives two linear
    equations in the other 8 entries, the 8x8 system solved per matrix (no three points collinear)."""
    src, dst = jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32)
    src = jnp.broadcast_to(src, dst.shape)
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    zero, one = jnp.zeros_like(x), jnp.ones_like(x)
    rows_u = jnp.stack([x, y, one, zero, zero, zero, -x * u, -y * u], -1)  # [..., 4, 8]
    rows_v = jnp.stack([zero, zero, zero, x, y, one, -x * v, -y * v], -1)
    a = jnp.concatenate([rows_u, rows_v], axis=-2)  # [..., 8, 8]
    b = jnp.concatenate([u, v], axis=-1)[..., None]  # [..., 8, 1]
    h = jnp.linalg.solve(a, b)[..., 0]
    return jnp.concatenate([h, one[..., :1]], axis=-1).reshape(h.shape[:-1] + (3, 3))


def projective_corners(quarter_turns, scale, corner_shift) -> jax.Array:
    """[..., 4, 2] where AET-project sends the image's corners (`CORNERS`): scaled by `scale` [...]
    and turned by quarter_turns [...] (ints) x 90° about the centre, then moved by corner_shift
    [..., 4, 2] (normalised units)."""
    rot = _quarter_turn(jnp.asarray(quarter_turns, jnp.int32))
    corners = jnp.asarray(CORNERS, jnp.float32)
    turned = jnp.einsum("...ij,kj->...ki", rot, corners, precision=jax.lax.Precision.HIGHEST)
    return jnp.asarray(scale, jnp.float32)[..., None, None] * turned + corner_shift


def projective_matrix(quarter_turns, scale, corner_shift) -> jax.Array:
    """[..., 3, 3] the homography (H₃₃ = 1) from the corners to `projective_corners`."""
    return homography_from_corners(jnp.asarray(CORNERS, jnp.float32),
                                   projective_corners(quarter_turns, scale, corner_shift))


def sample_projective_params(rng: jax.Array, n: int, corner_shift: float, scale: tuple) -> dict:
    """n draws of AET-project's family: {'quarter_turns' [n] int32 uniform in {0, 1, 2, 3},
    'scale' [n] ~ U[scale], 'corner_shift' [n, 4, 2] ~ U[−2f, 2f] (f = corner_shift, a fraction of
    the side; 2f in [−1, 1] units)}, the arguments of `projective_matrix`."""
    k_turn, k_u = jax.random.split(rng)
    u = jax.random.uniform(k_u, (n, 9), jnp.float32)
    return {"quarter_turns": jax.random.randint(k_turn, (n,), 0, 4, jnp.int32),
            "scale": scale[0] + (scale[1] - scale[0]) * u[:, 0],
            "corner_shift": 2.0 * corner_shift * (2 * u[:, 1:] - 1).reshape(n, 4, 2)}


def sample_projective(rng: jax.Array, n: int, corner_shift: float, scale: tuple) -> jax.Array:
    """[n, 3, 3] random homographies of AET-project's family (`sample_projective_params`)."""
    return projective_matrix(**sample_projective_params(rng, n, corner_shift, scale))


def regression_target(matrices: jax.Array) -> jax.Array:
    """[N, P] the free entries AET regresses: an affine [N, 2, 3] gives its 6 (row-major), a
    homography [N, 3, 3] (H₃₃ = 1) its first 8 (the same 6, then H₃₁, H₃₂)."""
    n = matrices.shape[0]
    return matrices.reshape(n, -1)[:, :8] if matrices.shape[-2] == 3 else matrices.reshape(n, 6)


def warp(images: jax.Array, matrices: jax.Array, cval: float = 0.0) -> jax.Array:
    """images [N, H, W, C] transformed by matrices [N, 2, 3] (affine [A | t]) or [N, 3, 3]
    (homographies), input -> output, normalised coordinates: output pixel v = the bilinear sample
    of the input at M⁻¹·(v, 1) divided by its last coordinate (affine: A⁻¹(v − t)), `cval` where a
    sample's neighbours fall outside (jax.scipy.ndimage.map_coordinates, order 1, mode 'constant')."""
    n, h, w, c = images.shape
    matrices = jnp.asarray(matrices, jnp.float32)
    if matrices.shape[-2] == 2:  # [A | t] -> [[A, t], [0, 0, 1]]: the same map, one code path
        last = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], jnp.float32), (n, 1, 3))
        matrices = jnp.concatenate([matrices, last], axis=1)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Pixel centre (i, j) <-> normalised (x, y) = ((j − (W−1)/2)/(W/2), (i − (H−1)/2)/(H/2)).
    v = jnp.stack([(cols - (w - 1) / 2) / (w / 2), (rows - (h - 1) / 2) / (h / 2), jnp.ones_like(rows)], -1)
    src = jnp.einsum("nij,hwj->nhwi", jnp.linalg.inv(matrices), v, precision=jax.lax.Precision.HIGHEST)
    src = src[..., :2] / src[..., 2:]
    src_cols = src[..., 0] * (w / 2) + (w - 1) / 2
    src_rows = src[..., 1] * (h / 2) + (h - 1) / 2

    def one(image, r, q):  # image [H, W, C]; r, q [H, W]
        return jax.vmap(lambda ch: map_coordinates(ch, [r, q], order=1, mode="constant", cval=cval),
                        in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images.astype(jnp.float32), src_rows, src_cols)


class AET(ProxyTask):
    name = "aet"

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        # A run recorded before the option existed is AET-affine.
        self.transform = self.cfg.get("transform", "affine")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"aet.transform={self.transform!r}; choose one of {TRANSFORMS}.")

    def build_decoder(self):
        return build_head(dict(hidden_dim=0, output_dim=NUM_PARAMS[self.cfg.get("transform", "affine")],
                               num_layers=1, hidden_bn=False, output_bn="none", output_bias=True))

    def decoder_input(self, pooled, feature_map):
        return pooled

    def head_init_input(self, head_in):
        return jnp.concatenate([head_in, head_in], axis=-1)

    def sample(self, rng, n: int) -> jax.Array:
        """n matrices of the configured family: affine [n, 2, 3] or projective [n, 3, 3]."""
        if self.transform == "projective":
            return sample_projective(rng, n, float(self.cfg.corner_shift), tuple(self.cfg.projective_scale))
        return sample_affine(rng, n, float(self.cfg.rotation), float(self.cfg.translation),
                             tuple(self.cfg.scale), float(self.cfg.shear))

    def transformed(self, x, rng):
        """(transformed images, normalised like x; the matrices that made them)."""
        matrices = self.sample(rng, x.shape[0])
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
        target = regression_target(matrices)
        loss = proxy_losses.aet(pred, target)
        return loss, {"aet_param_mse": jnp.mean((pred - target) ** 2)}, pooled[:, 0], \
            {"encoder": enc_stats, "decoder": head_stats}, {}
