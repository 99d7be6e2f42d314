"""Tests of the DSSL heavy augmentations (ssl_jax.data.heavy) against PIL and NumPy references."""
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ssl_jax.data import heavy as H

POLICIES = ("ra(2,5)", "ra(8,16)", "jigsaw(4)", "ua", "ra(2,5)+jigsaw(4)",
            "choice(0.9:ra(2,5), 0.1:jigsaw(4))")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _noise(h=32, w=48, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _photo_like(h=32, w=48, seed=0):
    """A smooth image with a narrow, uneven histogram (where autocontrast/equalize do something)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 60 + 40 * np.sin(x / 5.0)[..., None] + 30 * np.cos(y / 7.0)[..., None]
    img = base * np.array([1.0, 0.8, 0.6]) + rng.randint(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _images():
    flat = _photo_like()
    flat[..., 2] = 77  # a constant channel: autocontrast/equalize must leave it alone
    return [_noise(), _photo_like(), flat, _photo_like(7, 5, seed=3)]


def _seed(i, j=0):
    return tf.constant([i, j], tf.int64)


def _op(name, img, m, seed=0):
    return H.apply_op(name, tf.constant(img), m, _seed(seed)).numpy()


# ------------------------------------------------------------------------- shapes, determinism

@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_every_op_shape_dtype_deterministic(shape):
    img = _noise(*shape)
    for name in H.OPS:
        for m in (0.0, 13.0, 30.0):
            out = H.apply_op(name, tf.constant(img), m, _seed(3))
            assert out.dtype == tf.uint8 and out.shape == img.shape, name
            np.testing.assert_array_equal(out, H.apply_op(name, tf.constant(img), m, _seed(3)))


@pytest.mark.parametrize("spec", POLICIES)
def test_policies_shape_dtype_seeds(spec):
    policy = H.parse_policy(spec)
    for shape in ((32, 32), (32, 48)):
        img = tf.constant(_noise(*shape))
        outs = [H.apply_policy(policy, img, _seed(s)).numpy() for s in range(4)]
        for out in outs:
            assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(outs[0], H.apply_policy(policy, img, _seed(0)))
        assert any(not np.array_equal(outs[0], o) for o in outs[1:]), spec


def test_none_is_identity():
    img = tf.constant(_noise())
    np.testing.assert_array_equal(H.apply_policy(H.parse_policy("none"), img, _seed(1)), img)
    np.testing.assert_array_equal(H.apply_policy_batch("none", img[None], _seed(1)[None]), img[None])


# ------------------------------------------------------------------------------ PIL references

def _value(name, m):
    lo, hi = H._RANGES[name]
    return m / 30.0 * (hi - lo) + lo


_PIL = {
    "invert": lambda im, v: ImageOps.invert(im),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
}


@pytest.mark.parametrize("name", sorted(_PIL))
def test_point_and_enhance_ops_match_pil(name):
    for img in _images():
        for m in (0.0, 5.0, 9.0, 16.0, 23.5, 30.0):
            v = _value(name, m) if name in H._RANGES else None
            ref = np.asarray(_PIL[name](Image.fromarray(img), v))
            out = _op(name, img, m)
            np.testing.assert_array_equal(out, ref, err_msg=f"{name} m={m}")


# ---------------------------------------------------------------------------- NumPy references

def _sample_nearest(img, src_x, src_y):
    """out[y, x] = img[floor(src_y), floor(src_x)] or 128 outside (PIL-style pixel areas)."""
    h, w, _ = img.shape
    ix, iy = np.floor(src_x).astype(int), np.floor(src_y).astype(int)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.full_like(img, 128)
    out[inside] = img[iy[inside], ix[inside]]
    return out


def _geometric_reference(name, img, v):
    """Continuous coordinates, origin at the top-left corner; output pixel centres mapped back."""
    h, w, _ = img.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    if name == "rotate":
        t = math.radians(v)
        dx, dy = x - w / 2.0, y - h / 2.0
        sx, sy = math.cos(t) * dx - math.sin(t) * dy + w / 2.0, math.sin(t) * dx + math.cos(t) * dy + h / 2.0
    else:
        sx, sy = {"shear_x": (x + v * y, y), "shear_y": (x, y + v * x),
                  "translate_x": (x + v, y), "translate_y": (x, y + v)}[name]
    return _sample_nearest(img, sx, sy)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_match_numpy_reference(name):
    img = _noise(24, 40, seed=5)
    signs = set()
    for m in (4.0, 11.0, 30.0):
        v = _value(name, m)
        refs = [_geometric_reference(name, img, s * v) for s in (1.0, -1.0)]
        for seed in range(6):
            out = _op(name, img, m, seed)
            # Float32 (TF) vs float64 (here) can disagree where a source coordinate lies within
            # rounding error of a pixel boundary (e.g. v * (y + 1/2) = k + 1/2 exactly): at most
            # 4 of 960 pixels over magnitudes 1..30; 1% leaves room, a wrong map differs on most.
            mismatch = [np.any(out != r, axis=-1).mean() for r in refs]
            best = int(np.argmin(mismatch))
            assert mismatch[best] <= 0.01, (name, m, mismatch)
            if not np.array_equal(*refs):  # (translations of 100 px leave grey either way)
                signs.add(best)
    assert signs == {0, 1}, f"{name}: the sign is not random over seeds"


def test_rotate_matches_pil_direction():
    img = _photo_like(32, 32)
    out = _op("rotate", img, 30.0)
    refs = [np.asarray(Image.fromarray(img).rotate(a, fillcolor=(128, 128, 128))) for a in (30, -30)]
    assert min(np.any(out != r, axis=-1).mean() for r in refs) <= 0.01


def test_cutout_is_a_filled_square():
    img = _noise(32, 48, seed=2)
    fill = np.array([125, 123, 114], np.uint8)
    for m in (0.0, 9.0, 30.0):
        side = int(_value("cutout", m))
        corners = set()
        for seed in range(8):
            out = _op("cutout", img, m, seed)
            filled = np.all(out == fill, axis=-1) & np.any(img != fill, axis=-1)
            np.testing.assert_array_equal(out[~filled], img[~filled])
            if side == 0:
                assert not filled.any()
                continue
            ys, xs = np.nonzero(filled)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            assert filled[y0:y1, x0:x1].all()  # one rectangle
            for lo, hi, size in ((y0, y1, 32), (x0, x1, 48)):
                assert hi - lo == side or (hi - lo < side and (lo == 0 or hi == size))
            corners.add((y0, x0))
        assert side == 0 or len(corners) > 4


def test_magnitude_zero_and_identity_points():
    img = _noise(32, 48)
    for name in GEOMETRIC + ("cutout", "identity"):
        np.testing.assert_array_equal(_op(name, img, 0.0), img, err_msg=name)
    for name in ("color", "contrast", "brightness", "sharpness", "solarize"):
        m = 30.0 if name == "solarize" else 15.0  # factor 1.0; threshold 256
        np.testing.assert_array_equal(_op(name, img, m), img, err_msg=name)
    np.testing.assert_array_equal(_op("solarize", img, 0.0), 255 - img)
    np.testing.assert_array_equal(_op("posterize", img, 0.0), img & 0x80)


# --------------------------------------------------------------------------------------- jigsaw

def _tiles(img, n):
    th, tw = img.shape[0] // n, img.shape[1] // n
    return sorted(img[i * th:(i + 1) * th, j * tw:(j + 1) * tw].tobytes() for i in range(n) for j in range(n))


def test_jigsaw_permutes_tiles():
    img = _noise(34, 35, seed=4)  # not divisible by 4: 8x8 tiles, the remainder stays
    policy = H.parse_policy("jigsaw(4)")
    moved = 0
    for seed in range(6):
        out = H.apply_policy(policy, tf.constant(img), _seed(seed)).numpy()
        assert _tiles(out, 4) == _tiles(img, 4)
        np.testing.assert_array_equal(out[32:], img[32:])
        np.testing.assert_array_equal(out[:, 32:], img[:, 32:])
        moved += not np.array_equal(out, img)
    assert moved >= 5
    one = H.apply_policy(H.parse_policy("jigsaw(1)"), tf.constant(img), _seed(0))
    np.testing.assert_array_equal(one, img)


# ------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("spec,canonical", [
    ("ra(2,5)", "ra(2,5)"),
    (" RandAugment( 8 , 16.5 ) ", "ra(8,16.5)"),
    ("ra(2,5)+jigsaw(4)", "ra(2,5)+jigsaw(4)"),
    ("UniformAugment+none", "ua"),
    ("none", "none"),
    ("choice(0.9:ra(2,5), 0.1:jigsaw(4))", "choice(0.9:ra(2,5), 0.1:jigsaw(4))"),
    ("choice(0.5:ra(1,3)+jigsaw(2),0.25:choice(0.5:ua,0.5:none),0.25:none)",
     "choice(0.5:ra(1,3)+jigsaw(2), 0.25:choice(0.5:ua, 0.5:none), 0.25:none)"),
])
def test_parse_round_trip(spec, canonical):
    policy = H.parse_policy(spec)
    assert H.policy_spec(policy) == canonical
    assert H.parse_policy(canonical) == policy
    hash(policy)  # immutable


@pytest.mark.parametrize("spec,what", [
    ("ra(2)", "expected ','"),
    ("ra(0,5)", ">= 1"),
    ("ra(2.5,5)", "integer"),
    ("ra(2,31)", "[0, 30]"),
    ("jigsaw(0)", ">= 1"),
    ("jigsaw", "expected '('"),
    ("rand(2,5)", "unknown policy"),
    ("", "policy name"),
    ("ra(2,5)+", "policy name"),
    ("ra(2,5)jigsaw(4)", "unexpected text"),
    ("choice(0.5:ra(2,5), 0.4:jigsaw(4))", "sum to 1"),
    ("choice(0:ra(2,5), 1:jigsaw(4))", "> 0"),
])
def test_parse_errors(spec, what):
    with pytest.raises(ValueError) as info:
        H.parse_policy(spec)
    message = str(info.value)
    assert repr(spec) in message and what in message and "ra(2,5)+jigsaw(4)" in message


def test_choice_frequencies():
    img = tf.constant(_noise(16, 16))
    n = 1000
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(9, tf.int64))], axis=1)
    out = H.apply_policy_batch("choice(0.75:none, 0.25:jigsaw(4))", tf.tile(img[None], [n, 1, 1, 1]), seeds)
    changed = np.any(out.numpy() != img.numpy()[None], axis=(1, 2, 3)).mean()
    assert 0.2 < changed < 0.3  # 0.25 * (1 - 1/16!) ~ 0.25; 4 standard deviations ~ 0.055


# ---------------------------------------------------------------------------- batch, tf.data

@pytest.mark.parametrize("spec", POLICIES + ("choice(0.5:ua+jigsaw(2), 0.5:ra(3,12))",))
def test_batch_equals_per_example(spec):
    images = tf.constant(np.stack([_noise(32, 48, seed=i) for i in range(12)]))
    seeds = tf.constant([[i, 100 + i] for i in range(12)], tf.int64)
    policy = H.parse_policy(spec)
    batch = H.apply_policy_batch(policy, images, seeds).numpy()
    for i in range(12):
        np.testing.assert_array_equal(batch[i], H.apply_policy(policy, images[i], seeds[i]), err_msg=f"{spec} {i}")


def test_in_dataset_map_and_dynamic_shapes():
    policy = H.parse_policy("ra(2,5)+jigsaw(4)")
    images = np.stack([_noise(32, 48, seed=i) for i in range(6)])
    seeds = np.array([[i, 3] for i in range(6)], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, seeds))
    per_example = ds.map(lambda x, s: H.apply_policy(policy, x, s), num_parallel_calls=2)
    batched = ds.batch(3).map(lambda x, s: H.apply_policy_batch(policy, x, s))
    expected = np.stack([H.apply_policy(policy, tf.constant(x), tf.constant(s)) for x, s in zip(images, seeds)])
    np.testing.assert_array_equal(np.stack(list(per_example.as_numpy_iterator())), expected)
    np.testing.assert_array_equal(np.concatenate(list(batched.as_numpy_iterator())), expected)

    dynamic = tf.function(lambda x, s: H.apply_policy(policy, x, s), input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)])
    np.testing.assert_array_equal(dynamic(images[0], seeds[0]), expected[0])
