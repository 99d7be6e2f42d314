"""Tests of the stateless tf.data augmentation ops (ssl_jax.data.augment)."""
import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from ssl_jax.data import augment as A

V1, V2 = A.byol_view_configs()


def _image(h=40, w=50, seed=0):
    return tf.constant(np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8))


def _float_image(h=24, w=24, seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(0, 1, (h, w, 3)).astype(np.float32))


def _seed(i, j=0):
    return tf.constant([i, j], tf.int64)


def _in_unit(x):
    x = np.asarray(x)
    return x.min() >= 0.0 and x.max() <= 1.0


# ------------------------------------------------------------------------------ shapes, ranges

def test_each_op_shape_dtype_range():
    img = _image()
    x = _float_image()
    out = A.random_resized_crop(img, _seed(1), 16)
    assert out.shape == (16, 16, 3) and out.dtype == tf.float32 and _in_unit(out)
    for fn in (lambda: A.random_flip(x, _seed(2), 1.0),
               lambda: A.color_jitter(x, _seed(3), 0.4, 0.4, 0.2, 0.1, 1.0),
               lambda: A.random_grayscale(x, _seed(4), 1.0),
               lambda: A.gaussian_blur(x, _seed(5), 1.0),
               lambda: A.solarize(x, _seed(6), 1.0)):
        y = fn()
        assert y.shape == x.shape and y.dtype == tf.float32 and _in_unit(y)
    n = A.normalize(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_allclose(n, (x.numpy() - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg", [V1, V2])
def test_augment_view_shape_range_and_normalisation(cfg):
    img = _image()
    raw = A.augment_view(img, _seed(7), cfg, 16)
    assert raw.shape == (16, 16, 3) and raw.dtype == tf.float32 and _in_unit(raw)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    normed = A.augment_view(img, _seed(7), cfg, 16, mean=mean, std=std)
    np.testing.assert_allclose(normed, (raw.numpy() - mean) / std, atol=1e-5)


def test_augment_view_jpeg_bytes_equals_decoded_image():
    img = _image(48, 64, seed=3).numpy()
    jpeg = tf.io.encode_jpeg(img, quality=90)
    decoded = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
    for i in range(4):
        a = A.augment_view(jpeg, _seed(i), V2, 24, is_jpeg_bytes=True)
        b = A.augment_view(decoded, _seed(i), V2, 24)
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_determinism():
    img = _image()
    a = A.augment_view(img, _seed(11), V2, 16)
    b = A.augment_view(img, _seed(11), V2, 16)
    c = A.augment_view(img, _seed(12), V2, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(A.random_resized_crop(img, _seed(3), 8), A.random_resized_crop(img, _seed(3), 8))


# ------------------------------------------------------------------------------- probabilities

@tf.function
def _decisions(seeds, cfg_items):
    cfg = dict(cfg_items)
    return tf.map_fn(lambda s: {k: v for k, v in A.sample_view_params(s, cfg).items()
                                if k in ("flip", "jitter", "gray", "blur", "solarize")},
                     seeds, fn_output_signature={k: tf.bool for k in ("flip", "jitter", "gray", "blur", "solarize")})


def test_per_view_probabilities_over_1000_draws():
    seeds = tf.stack([tf.range(1000, dtype=tf.int64), tf.fill([1000], tf.constant(5, tf.int64))], axis=1)
    rates = {}
    for name, cfg in (("v1", V1), ("v2", V2)):
        d = _decisions(seeds, tuple(sorted(cfg.items())))
        rates[name] = {k: float(np.mean(v)) for k, v in d.items()}
    assert rates["v1"]["blur"] == 1.0 and rates["v1"]["solarize"] == 0.0
    assert abs(rates["v2"]["blur"] - 0.1) < 0.03
    assert abs(rates["v2"]["solarize"] - 0.2) < 0.04
    for r in rates.values():
        assert abs(r["flip"] - 0.5) < 0.05 and abs(r["jitter"] - 0.8) < 0.04 and abs(r["gray"] - 0.2) < 0.04


def test_should_apply_drives_the_op():
    x = _float_image()
    for i in range(20):
        seed = _seed(i, 9)
        applied = bool(A.should_apply(A.uniforms(seed, 1)[0], 0.5))
        flipped = A.random_flip(x, seed, 0.5)
        np.testing.assert_array_equal(flipped, x.numpy()[:, ::-1] if applied else x.numpy())


# --------------------------------------------------------------------------- references per op

def test_grayscale_equal_channels_matches_tf():
    x = _float_image()
    g = A.random_grayscale(x, _seed(0), 1.0).numpy()
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    np.testing.assert_allclose(g[..., :1], tf.image.rgb_to_grayscale(x), atol=1e-6)
    np.testing.assert_array_equal(A.random_grayscale(x, _seed(0), 0.0), x)


def test_solarize_numpy_reference():
    x = _float_image()
    for t in (0.5, 0.3):
        ref = np.where(x.numpy() < t, x.numpy(), 1.0 - x.numpy())
        np.testing.assert_allclose(A.solarize(x, _seed(1), 1.0, threshold=t), ref, atol=0)
    np.testing.assert_array_equal(A.solarize(x, _seed(1), 0.0), x)


@pytest.mark.parametrize("size,kernel,sigma", [(32, 23, 1.3), (24, 5, 0.7), (6, 9, 2.0)])
def test_gaussian_blur_scipy_reference(size, kernel, sigma):
    x = _float_image(size, size, seed=size)
    r = kernel // 2
    w = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    ref = ndimage.correlate1d(x.numpy().astype(np.float64), w, axis=0, mode="mirror")
    ref = ndimage.correlate1d(ref, w, axis=1, mode="mirror")
    out = A.gaussian_blur(x, _seed(2), 1.0, sigma=(sigma, sigma), kernel_size=kernel)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(A.gaussian_blur(x, _seed(2), 0.0, kernel_size=kernel), x)


def test_blur_kernel_size_and_subset_path():
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(32) == 3 and A.blur_kernel_size(16) == 1
    x = tf.random.stateless_uniform([8, 32, 32, 3], [1, 2])
    params = {"blur": tf.constant([True, False] * 4), "blur_sigma": tf.linspace(0.1, 2.0, 8)}
    np.testing.assert_allclose(A.apply_gaussian_blur_subset(x, params), A.apply_gaussian_blur(x, params), atol=1e-6)


def _tf_jitter_reference(x, order, values):
    b, c, s, h = values
    for op in order:
        x = [lambda y: y + b, lambda y: tf.image.adjust_contrast(y, c),
             lambda y: tf.image.adjust_saturation(y, s), lambda y: tf.image.adjust_hue(y, h)][op](x)
        x = tf.clip_by_value(x, 0.0, 1.0)
    return x


def test_color_jitter_every_order_matches_sequential_tf_image_ops():
    x = tf.random.stateless_uniform([24, 12, 12, 3], [3, 4])
    values = tf.constant([0.15, 1.3, 0.6, 0.07])
    params = {"jitter": tf.fill([24], True), "jitter_order": tf.range(24),
              "jitter_values": tf.tile(values[None], [24, 1])}
    out = A.apply_color_jitter(x, params).numpy()
    for i, order in enumerate(A.JITTER_ORDERS):
        ref = _tf_jitter_reference(x[i:i + 1], order, values.numpy())
        np.testing.assert_allclose(out[i:i + 1], ref, atol=2e-5, err_msg=str(order))
    assert sorted(A.JITTER_ORDERS) == sorted(itertools.permutations(range(4)))


def test_color_jitter_strength_ranges_and_off():
    u = tf.random.stateless_uniform([2000, A.NUM_JITTER_UNIFORMS], [5, 6])
    p = A.color_jitter_params_from_uniforms(u, 0.4, 0.4, 0.2, 0.1, prob=0.8)
    v = p["jitter_values"].numpy()
    assert np.abs(v[:, 0]).max() <= 0.4 and v[:, 0].min() < -0.35 and v[:, 0].max() > 0.35
    assert v[:, 1].min() >= 0.6 and v[:, 1].max() <= 1.4
    assert v[:, 2].min() >= 0.8 and v[:, 2].max() <= 1.2
    assert np.abs(v[:, 3]).max() <= 0.1
    assert len(np.unique(p["jitter_order"])) == 24
    x = _float_image()
    np.testing.assert_array_equal(A.color_jitter(x, _seed(1), 0.4, 0.4, 0.2, 0.1, prob=0.0), x)


# ------------------------------------------------------------------------------------- crops

def test_crop_window_area_and_ratio_within_bounds():
    u = tf.random.stateless_uniform([1000, A.NUM_CROP_UNIFORMS], [7, 8])
    for scale in ((0.08, 1.0), (0.3, 0.5)):
        y, x, h, w = A.crop_window_from_uniforms(u, (300, 400), scale).numpy().T
        area = h * w / (300 * 400)
        assert area.min() >= scale[0] * 0.97 and area.max() <= scale[1] * 1.03
        assert (w / h).min() >= 0.75 * 0.97 and (w / h).max() <= 4 / 3 * 1.03
        assert (y >= 0).all() and (x >= 0).all() and (y + h <= 300).all() and (x + w <= 400).all()
        assert area.max() - area.min() > 0.5 * (scale[1] - scale[0])


def test_crop_fallback_is_centred_clamped_ratio():
    # A 10x200 strip cannot hold 90% of its area at an aspect ratio within [3/4, 4/3].
    w = A.sample_crop_window(_seed(0), (10, 200), scale=(0.9, 1.0)).numpy()
    np.testing.assert_array_equal(w, [0, (200 - 13) // 2, 10, 13])


def test_random_resized_crop_is_crop_then_resize_of_its_window():
    img = _image(30, 45, seed=4)
    window = A.sample_crop_window(_seed(5), img.shape).numpy()
    y, x, h, w = window
    ref = A.resize_decoded_crop(img[y:y + h, x:x + w], 20)
    np.testing.assert_allclose(A.random_resized_crop(img, _seed(5), 20), ref, atol=1e-5)


@pytest.mark.parametrize("subsample", [True, False])
def test_fused_jpeg_crop_equals_decode_then_crop(subsample):
    rng = np.random.RandomState(int(subsample))
    for i in range(12):
        hh, ww = rng.randint(20, 90, 2)
        jpeg = tf.io.encode_jpeg(rng.randint(0, 256, (hh, ww, 3)).astype(np.uint8), quality=85,
                                 chroma_downsampling=subsample)
        full = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        y, x, h, w = A.sample_crop_window(_seed(i, 1), full.shape).numpy()
        np.testing.assert_array_equal(A.decode_jpeg_window(jpeg, [y, x, h, w]), full[y:y + h, x:x + w])
        fused = A.decode_and_random_crop_jpeg(jpeg, _seed(i, 1), 16)
        np.testing.assert_allclose(fused, A.random_resized_crop(full, _seed(i, 1), 16), atol=1e-5)


# --------------------------------------------------------------------------------- view config

def test_byol_view_configs_match_paper_table6():
    for v in (V1, V2):
        assert set(v) == set(A.VIEW_KEYS)
        assert v["crop_scale"] == (0.08, 1.0) and v["flip_prob"] == 0.5 and v["color_jitter_prob"] == 0.8
        assert (v["brightness"], v["contrast"], v["saturation"], v["hue"]) == (0.4, 0.4, 0.2, 0.1)
        assert v["grayscale_prob"] == 0.2
    assert (V1["blur_prob"], V2["blur_prob"], V1["solarize_prob"], V2["solarize_prob"]) == (1.0, 0.1, 0.0, 0.2)


def test_bad_view_config_is_a_clear_error():
    with pytest.raises(ValueError, match="missing.*solarize_prob"):
        A.augment_view(_image(), _seed(0), {k: v for k, v in V1.items() if k != "solarize_prob"}, 8)
    with pytest.raises(ValueError, match="unknown.*blur_size"):
        A.augment_view(_image(), _seed(0), dict(V1, blur_size=3), 8)


def test_jitted_batch_ops_match_reference_ops():
    x = tf.random.stateless_uniform([16, 32, 32, 3], [9, 9])
    u = tf.random.stateless_uniform([16, A.NUM_VIEW_UNIFORMS], [1, 1])
    for cfg in (V1, V2):
        params = A.view_params_from_uniforms(u, cfg)
        ref = A.apply_view_ops(x, params, cfg, (0.5,) * 3, (0.25,) * 3)
        fast = A.make_view_ops_fn(cfg, (0.5,) * 3, (0.25,) * 3, jit=True)(x, params)
        np.testing.assert_allclose(fast, ref, atol=5e-5)


def test_per_example_pre_blur_matches_batch_ops_for_every_order():
    # The streaming path runs flip/jitter/gray per example with branches; the batch path with
    # vectorised selects. Both must agree for every jitter order, with and without each op.
    n = len(A.JITTER_ORDERS)
    x = tf.random.stateless_uniform([n, 20, 20, 3], [2, 3])
    u = tf.random.stateless_uniform([n, A.NUM_VIEW_UNIFORMS], [4, 5])
    for cfg in (V1, V2):
        params = A.view_params_from_uniforms(u, cfg)
        params["jitter_order"] = tf.range(n)
        params["jitter"] = tf.range(n) % 5 != 0
        ref = A._pre_blur(x, params, cfg).numpy()
        for jit in (False, True):
            fn = A.make_example_pre_blur_fn(cfg, jit=jit)
            for i in range(n):
                out = fn(x[i], {k: v[i] for k, v in params.items()})
                np.testing.assert_allclose(out, ref[i], atol=2e-5, err_msg=f"jit={jit} order={A.JITTER_ORDERS[i]}")
    assert params["flip"].numpy().any() and params["gray"].numpy().any()
