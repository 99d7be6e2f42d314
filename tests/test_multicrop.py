"""Multi-crop views (SwAV, DINO): per-view ``size`` in the view config, in memory and streaming."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import augment as A
from ssl_jax.data import pipeline as P

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)


def _multicrop_views(global_size=16, local_size=8, num_local=4):
    """DINO-style: the two asymmetric BYOL views as global crops, then ``num_local`` local crops."""
    g1, g2 = A.byol_view_configs()
    local = dict(g1, crop_scale=LOCAL_SCALE, blur_prob=0.5, solarize_prob=0.0, size=local_size)
    globals_ = [dict(g, crop_scale=GLOBAL_SCALE) for g in (g1, g2)]
    if global_size is not None:
        globals_ = [dict(g, size=global_size) for g in globals_]
    return globals_ + [dict(local) for _ in range(num_local)]


def _cfg(**kw):
    views = _multicrop_views()
    cfg = dict(dataset="digits", data_dir=None, train_split="train", image_size=16, mean=MEAN, std=STD,
               shuffle_buffer=2000, views=views)
    cfg.update(kw)
    return cfg


def _iterator(cfg, seed=0, start_step=0, batch=64, jit=False):
    return P.pretrain_iterator(cfg, global_batch_size=batch, seed=seed, start_step=start_step,
                               num_views=len(cfg["views"]), process_index=0, process_count=1,
                               jit_augment=jit)


def _assert_multicrop_batch(batch, b, sizes):
    assert set(batch) == {"views", "label", "index"} and len(batch["views"]) == len(sizes)
    for v, (x, s) in enumerate(zip(batch["views"], sizes)):
        assert x.shape == (b, s, s, 3) and x.dtype == np.float32, (v, x.shape, x.dtype)
        pixels = x * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)  # undo normalisation
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, v
        assert x.min() < -0.5 and np.isfinite(x).all(), v  # normalised, not [0, 1]
    assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32


def _assert_batches_equal(a, b):
    np.testing.assert_array_equal(a["label"], b["label"])
    assert len(a["views"]) == len(b["views"])
    for x, y in zip(a["views"], b["views"]):
        np.testing.assert_array_equal(x, y)


SIZES = [16, 16, 8, 8, 8, 8]


# ------------------------------------------------------------------------------ shapes, sizes

def test_digits_multicrop_static_shapes_counts_and_normalisation():
    # XLA-compiled per-batch ops (the default): every view's shape is static.
    batch = next(_iterator(_cfg(), batch=32, jit=True))
    _assert_multicrop_batch(batch, 32, SIZES)
    v = batch["views"]
    assert not np.allclose(v[2], v[3])  # same config, own randomness per local view


def test_view_without_size_uses_image_size():
    # (The streaming test below runs global views without `size` through the pipeline.)
    views = _multicrop_views(global_size=None, local_size=8, num_local=2)
    assert [A.view_size(c, 12) for c in views] == [12, 12, 8, 8]
    assert A.view_size(dict(views[0], size=None), 12) == 12  # None = absent


def test_cifar10_multicrop_in_memory(shared_tfds_dir):
    cfg = _cfg(dataset="cifar10", data_dir=shared_tfds_dir, train_split="train[:1%]")
    batch = next(_iterator(cfg, batch=32))
    _assert_multicrop_batch(batch, 32, SIZES)


def test_in_memory_multicrop_equals_augment_view_per_view():
    # The batch path (one crop_and_resize per view) against the per-image reference, view by view,
    # with each view at its own size (augment_view takes the view's `size` over image_size).
    seed, b = 5, 64
    cfg = _cfg(views=_multicrop_views(global_size=24, local_size=12, num_local=2))  # 24 px: 3-px blur
    from ssl_jax.data import sources as S
    images, labels = S._digits_arrays()["train"]
    index = np.arange(len(images), dtype=np.int64)
    ds = P.pretrain_dataset(None, {"is_jpeg": False}, arrays=(images, index), views=cfg["views"],
                            image_size=16, mean=MEAN, std=STD, local_batch=b, steps_per_epoch=5, seed=seed,
                            jit_augment=False)
    batch = next(ds.as_numpy_iterator())
    assert [x.shape[1] for x in batch["views"]] == [24, 24, 12, 12]
    for row in (0, 17):
        example = images[batch["label"][row]]
        for v, view in enumerate(cfg["views"]):
            ref = A.augment_view(example, P.augmentation_seed(seed, 0, 0, row, v), view, 16, mean=MEAN, std=STD)
            np.testing.assert_allclose(batch["views"][v][row], ref, atol=1e-4)


def test_blur_kernel_follows_each_views_own_size():
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(96) == 9 and A.blur_kernel_size(12) == 1
    view = dict(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.0, color_jitter_prob=0.0,
                brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=1.0,
                blur_sigma=(1.5, 2.0), solarize_prob=0.0, solarize_threshold=0.5)
    image = tf.constant(np.random.RandomState(0).randint(0, 256, (40, 40, 3)).astype(np.uint8))
    seed = tf.constant([3, 4], tf.int64)
    for size, blurs in ((48, True), (12, False)):
        blurred = A.augment_view(image, seed, dict(view, size=size), 32)
        plain = A.augment_view(image, seed, dict(view, size=size, blur_prob=0.0), 32)
        assert blurred.shape == (size, size, 3)
        if blurs:  # the kernel of a 48-px view: 2 * (48 // 20) + 1 = 5 px
            sigma = A.sample_view_params(seed, view)["blur_sigma"]
            ref = A.gaussian_blur_images(plain[None], sigma[None], 5)[0]
            np.testing.assert_allclose(blurred, ref, atol=1e-5)
            assert not np.allclose(blurred, plain, atol=1e-3)
        else:
            np.testing.assert_array_equal(blurred, plain)


# ------------------------------------------------------------------------------------ streaming

def _jpeg_source(n=40):
    rng = np.random.RandomState(0)
    jpegs = [tf.io.encode_jpeg(rng.randint(0, 256, (rng.randint(30, 50), rng.randint(30, 50), 3))
                               .astype(np.uint8), quality=90).numpy() for _ in range(n)]
    src = tf.data.Dataset.from_tensor_slices({"image": jpegs, "label": np.arange(n, dtype=np.int64),
                                              "index": np.arange(n, dtype=np.int64)})
    return jpegs, src


def test_streaming_jpeg_multicrop_sizes_match_augment_view_and_resume():
    jpegs, src = _jpeg_source()
    views = _multicrop_views(global_size=None, local_size=12, num_local=2)  # globals: image_size=24
    b, spe, seed = 8, 3, 1

    def build(start):
        return P.pretrain_dataset(src, {"is_jpeg": True}, arrays=None, views=views, image_size=24, mean=MEAN,
                                  std=STD, local_batch=b, steps_per_epoch=spe, seed=seed, start_step=start,
                                  shuffle_buffer=16, jit_augment=False).as_numpy_iterator()

    fresh = list(itertools.islice(build(0), spe + 2))
    _assert_multicrop_batch(fresh[0], b, [24, 24, 12, 12])
    _assert_batches_equal(next(build(spe + 1)), fresh[spe + 1])
    for step, row in ((0, 3), (spe + 1, 6)):
        epoch, pos = divmod(step * b + row, spe * b)
        jpeg = jpegs[fresh[step]["label"][row]]
        for v, cfg in enumerate(views):
            ref = A.augment_view(jpeg, P.augmentation_seed(seed, 0, epoch, pos, v), cfg, 24,
                                 is_jpeg_bytes=True, mean=MEAN, std=STD)
            np.testing.assert_allclose(fresh[step]["views"][v][row], ref, atol=1e-4)


# ------------------------------------------------------------------------------- crop scales

def test_crop_area_fractions_lie_in_each_views_scale_range():
    # The windows the pipeline cuts: augment.view_uniforms of the pipeline's per-view seeds
    # (augmentation_seed), then augment.view_crop_window, for 2000 examples per view.
    n, seed = 2000, 11
    views = _multicrop_views()
    for v, cfg in enumerate(views):
        key = P.augmentation_seed(seed, 0, 0, 0, v)[0]
        u = next(iter(tf.data.Dataset.range(n).map(lambda pos: A.view_uniforms(tf.stack([key, pos]))).batch(n)))
        for big_h, big_w in ((1000, 1000), (375, 500)):
            y, x, h, w = [t.astype(np.float64) for t in A.view_crop_window(u, cfg, (big_h, big_w)).numpy().T]
            assert (y >= 0).all() and (x >= 0).all() and (y + h <= big_h).all() and (x + w <= big_w).all()
            frac = h * w / (big_h * big_w)
            # w and h are rounded to whole pixels: |h * w - area| <= (h + w) / 2 + 0.75 px.
            tol = (0.5 * (h + w) + 0.75) / (big_h * big_w)
            lo, hi = cfg["crop_scale"]
            assert (frac >= lo - tol).all() and (frac <= hi + tol).all(), (v, frac.min(), frac.max())
            # Spans the range: every tenth of it is drawn, the ends within 2% of the span.
            hist, _ = np.histogram(frac, bins=10, range=(lo, hi))
            assert (hist > 0).all(), (v, (big_h, big_w), hist)
            span = hi - lo
            assert frac.min() < lo + 0.02 * span and frac.max() > hi - 0.02 * span, (v, frac.min(), frac.max())


# ---------------------------------------------------------------------------------- determinism

def test_multicrop_determinism_and_exact_resume():
    cfg = _cfg()
    spe = P.steps_per_epoch(cfg, 256, 1)
    assert spe == 5
    k = spe + 2  # inside the second epoch
    fresh = list(itertools.islice(_iterator(cfg, seed=3, batch=256), k + 1))
    _assert_multicrop_batch(fresh[0], 256, SIZES)
    again = list(itertools.islice(_iterator(cfg, seed=3, batch=256), 2))
    _assert_batches_equal(again[0], fresh[0])
    _assert_batches_equal(again[1], fresh[1])
    assert not np.array_equal(fresh[1]["views"][2], fresh[0]["views"][2])
    _assert_batches_equal(next(_iterator(cfg, seed=3, start_step=k, batch=256)), fresh[k])


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [0, -96, 9.5, 96.0, "96", True, (96, 96)])
def test_bad_size_is_a_clear_error(bad):
    view = dict(_multicrop_views()[2], size=bad)
    with pytest.raises(ValueError, match=r"'size' must be a positive int.*remove 'size'"):
        A.check_view_cfg(view)
    cfg = _cfg(views=_multicrop_views()[:2] + [view])
    with pytest.raises(ValueError, match="'size'"):
        _iterator(cfg)


def test_size_is_the_only_optional_key():
    A.check_view_cfg(dict(_multicrop_views()[0], size=np.int64(96)))
    with pytest.raises(ValueError, match=r"unknown.*'sizes'"):
        A.check_view_cfg(dict(_multicrop_views()[0], sizes=96))
