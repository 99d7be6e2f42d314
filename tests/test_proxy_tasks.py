"""The proxy tasks colorization, context encoder and AET: their losses against NumPy references,
their on-device inputs and targets (soft-encoding, the central mask, the affine warp), and the
feature map the heads read. Their train steps: tests/test_sharding.py (1 vs 8 devices)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import color
from ssl_jax.losses import proxy
from ssl_jax.methods import aet as aet_lib
from ssl_jax.methods.colorization import cell_mean
from ssl_jax.methods.context_encoder import central_region
from ssl_jax.models import build_encoder
from ssl_jax.models.decoders import encode_with_map
from ssl_jax.presets import base_config

RNG = np.random.default_rng(0)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- colorization

def test_soft_encoding_sums_to_one_and_peaks_at_nearest_bin():
    bins = color.ab_bins()
    ab = RNG.uniform(-60, 60, size=(500, 2)).astype(np.float32)
    z = np.asarray(proxy.soft_encode(ab, bins))
    np.testing.assert_allclose(z.sum(-1), 1.0, atol=1e-6)
    d2 = ((ab[:, None] - bins[None]) ** 2).sum(-1)
    assert np.all(z.argmax(-1) == d2.argmin(-1))
    assert np.all((z > 0).sum(-1) == 5)
    # NumPy: the 5 nearest bins, Gaussian weights of sigma 5, normalised.
    ref = np.zeros_like(z)
    for i in range(len(ab)):
        near = np.argsort(d2[i])[:5]
        w = np.exp(-d2[i, near] / (2 * 25.0))
        ref[i, near] = w / w.sum()
    np.testing.assert_allclose(z, ref, atol=1e-5)


def test_rebalance_weights_match_numpy():
    bins = color.ab_bins()
    prior = RNG.gamma(0.3, size=len(bins)).astype(np.float32)
    w = np.asarray(proxy.rebalance_weights(prior, bins, lam=0.5, sigma=5.0))
    k = np.exp(-((bins[:, None] - bins[None]) ** 2).sum(-1) / 50.0)
    p = k @ (prior / prior.sum())
    p = p / p.sum()
    ref = 1.0 / (0.5 * p + 0.5 / len(bins))
    ref = ref / (p * ref).sum()
    np.testing.assert_allclose(w, ref, rtol=1e-4)
    assert abs((p * w).sum() - 1.0) < 1e-5
    assert w[np.argmax(p)] < 1.0 < w[np.argmin(p)]  # rare colours weigh more


def test_colorization_loss_matches_numpy():
    q = 7
    logits = RNG.normal(size=(3, 2, 2, q)).astype(np.float32)
    targets = RNG.dirichlet(np.ones(q), size=(3, 2, 2)).astype(np.float32)
    weights = RNG.uniform(0.5, 2.0, size=q).astype(np.float32)
    ce = -(targets * log_softmax(logits.astype(np.float64))).sum(-1)
    np.testing.assert_allclose(float(proxy.colorization(logits, targets)), ce.mean(), rtol=1e-5)
    v = weights[targets.argmax(-1)]
    np.testing.assert_allclose(float(proxy.colorization(logits, targets, weights)), (v * ce).mean(), rtol=1e-5)


def test_cell_mean_is_block_average():
    x = RNG.normal(size=(2, 8, 8, 2)).astype(np.float32)
    ref = x.reshape(2, 2, 4, 2, 4, 2).mean((2, 4))
    np.testing.assert_allclose(np.asarray(cell_mean(jnp.asarray(x), 2)), ref, atol=1e-6)
    with pytest.raises(ValueError, match="image_size divisible"):
        cell_mean(jnp.asarray(x), 3)


# ----------------------------------------------------------------------------- context encoder

def test_central_region_is_exact():
    start, side, hole, inner = central_region(32, 0.5, 1)
    assert (start, side) == (8, 16)
    expected = np.zeros((32, 32), bool)
    expected[9:23, 9:23] = True  # the central 16x16 (8..23) shrunk by the 1-px band
    np.testing.assert_array_equal(hole, expected)
    assert hole.sum() == 14 * 14 and inner.shape == (16, 16) and inner.sum() == 14 * 14
    np.testing.assert_array_equal(inner, hole[8:24, 8:24])
    assert central_region(16, 0.5, 0)[2].sum() == 64  # a quarter of the area
    with pytest.raises(ValueError, match="no hole"):
        central_region(16, 0.5, 4)


def test_context_encoder_loss_matches_numpy():
    pred, target = RNG.normal(size=(2, 2, 6, 6, 3)).astype(np.float32)
    _, _, _, inner = central_region(12, 0.5, 1)
    weight = np.where(inner, 1.0, 10.0)
    ref = (weight[None, :, :, None] * (pred.astype(np.float64) - target) ** 2).mean()
    np.testing.assert_allclose(float(proxy.context_encoder(pred, target, weight)), ref, rtol=1e-5)
    np.testing.assert_allclose(float(proxy.context_encoder(pred, target)), ((pred - target) ** 2).mean(), rtol=1e-5)


# ----------------------------------------------------------------------------- AET

def bilinear_reference(image, matrix):
    """NumPy: out[i, j] = bilinear sample of image at A⁻¹(v − t) (normalised coordinates), taps
    outside the image are 0."""
    h, w, _ = image.shape
    a_inv = np.linalg.inv(matrix[:, :2])
    out = np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            v = np.array([(j - (w - 1) / 2) / (w / 2), (i - (h - 1) / 2) / (h / 2)])
            sx, sy = a_inv @ (v - matrix[:, 2])
            c, r = sx * (w / 2) + (w - 1) / 2, sy * (h / 2) + (h - 1) / 2
            r0, c0 = math.floor(r), math.floor(c)
            for rr, cc, wt in ((r0, c0, (1 - (r - r0)) * (1 - (c - c0))), (r0, c0 + 1, (1 - (r - r0)) * (c - c0)),
                               (r0 + 1, c0, (r - r0) * (1 - (c - c0))), (r0 + 1, c0 + 1, (r - r0) * (c - c0))):
                if 0 <= rr < h and 0 <= cc < w:
                    out[i, j] += wt * image[rr, cc]
    return out


def matrix(angle=0.0, shift=(0.0, 0.0), scale=1.0, shear=0.0):
    return np.asarray(aet_lib.affine_matrix(jnp.float32(angle), jnp.asarray(shift, jnp.float32),
                                            jnp.float32(scale), jnp.float32(shear)))


def test_warp_identity_translation_rotation():
    images = RNG.uniform(size=(1, 8, 8, 3)).astype(np.float32)
    warp = jax.jit(aet_lib.warp)
    np.testing.assert_allclose(np.asarray(warp(images, matrix()[None])), images, atol=1e-6)
    # 2 px to the right and 1 px down: 2/4 and 1/4 in normalised units (8 px span 2).
    shifted = np.zeros_like(images)
    shifted[0, 1:, 2:] = images[0, :-1, :-2]
    np.testing.assert_allclose(np.asarray(warp(images, matrix(shift=(0.5, 0.25))[None])), shifted, atol=1e-5)
    # +90 degrees (x right, y down): the input pixel (row r, col c) goes to (row c, col 7 - r).
    rot = np.zeros_like(images)
    for r in range(8):
        for c in range(8):
            rot[0, c, 7 - r] = images[0, r, c]
    np.testing.assert_allclose(np.asarray(warp(images, matrix(angle=math.pi / 2)[None])), rot, atol=1e-5)
    # A general affine map against the loop-by-loop reference.
    m = matrix(angle=0.7, shift=(0.1, -0.3), scale=1.2, shear=0.3)
    np.testing.assert_allclose(np.asarray(warp(images, m[None]))[0], bilinear_reference(images[0], m), atol=1e-5)


def test_affine_matrix_and_sampling_bounds():
    p = aet_lib.sample_affine_params(jax.random.PRNGKey(0), 2000, 180.0, 0.2, (0.7, 1.3), 30.0)
    p = {k: np.asarray(v) for k, v in p.items()}
    assert np.abs(p["angle"]).max() <= math.pi and np.abs(p["angle"]).max() > 0.95 * math.pi
    assert np.abs(p["shift"]).max() <= 0.4 + 1e-6 and np.abs(p["shift"]).max() > 0.38
    assert p["scale"].min() >= 0.7 and p["scale"].max() <= 1.3
    assert np.abs(p["shear"]).max() <= math.radians(30) + 1e-6
    m = np.asarray(aet_lib.affine_matrix(**{k: jnp.asarray(v) for k, v in p.items()}))
    th, s, k = p["angle"][0], p["scale"][0], np.tan(p["shear"][0])
    ref = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.array([[1, k], [0, 1]])
    np.testing.assert_allclose(m[0, :, :2], ref, atol=1e-5)
    np.testing.assert_allclose(m[:, :, 2], p["shift"])
    np.testing.assert_allclose(np.linalg.det(m[:, :, :2]), p["scale"] ** 2, rtol=1e-4)


def test_aet_loss_matches_numpy():
    pred, target = RNG.normal(size=(2, 5, 6)).astype(np.float32)
    ref = (0.5 * ((pred.astype(np.float64) - target) ** 2).sum(-1)).mean()
    np.testing.assert_allclose(float(proxy.aet(pred, target)), ref, rtol=1e-5)
    g = jax.grad(proxy.aet)(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(g), (pred - target) / 5, rtol=1e-5)  # d/dpred of the mean


# ----------------------------------------------------------------------------- the heads' input

@pytest.mark.parametrize("name, map_shape", [("resnet18", (2, 2, 2, 64)), ("nin", (2, 4, 4, 24))])
def test_feature_map_is_the_one_pooled(name, map_shape):
    model = base_config("x").model
    model.update(dict(name=name, width=0.125, cifar_stem=True, dtype="float32", conv_backend="xla"))
    encoder = build_encoder(model)
    x = jnp.asarray(RNG.normal(size=(2, 16, 16, 3)).astype(np.float32))
    v = encoder.init(jax.random.PRNGKey(0), x, train=False)
    pooled, fmap, stats = encode_with_map(encoder, v["params"], v["batch_stats"], x)
    assert fmap.shape == map_shape
    np.testing.assert_allclose(np.asarray(fmap).mean((1, 2)), np.asarray(pooled), atol=1e-6)
    assert jax.tree.structure(stats) == jax.tree.structure(v["batch_stats"])
