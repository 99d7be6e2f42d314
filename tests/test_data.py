"""Tests of the data sources and input pipelines (ssl_jax.data.sources, ssl_jax.data.pipeline)."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import augment as A
from ssl_jax.data import pipeline as P
from ssl_jax.data import sources as S

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
VIEWS = list(A.byol_view_configs())


def _cfg(**kw):
    cfg = dict(dataset="digits", data_dir=None, train_split="train", image_size=16, mean=MEAN, std=STD,
               shuffle_buffer=2000, views=VIEWS)
    cfg.update(kw)
    return cfg


def _take(it, n):
    return list(itertools.islice(it, n))


def _assert_batches_equal(a, b):
    np.testing.assert_array_equal(a["label"], b["label"])
    assert len(a["views"]) == len(b["views"])
    for x, y in zip(a["views"], b["views"]):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------- sources

def test_digits_source_sizes_labels_and_pixels():
    for split, size in (("train", 1437), ("test", 360)):
        ds, n, info = S.load_split("digits", split, None)
        assert n == size and info == {"num_classes": 10, "image_shape": (8, 8, 3), "is_jpeg": False,
                                      "num_examples_total": size}
        batch = next(iter(ds.batch(2000)))
        images, labels = batch["image"].numpy(), batch["label"].numpy()
        assert images.shape == (size, 8, 8, 3) and images.dtype == np.uint8 and images.max() == 255
        assert (images[..., 0] == images[..., 2]).all() and batch["label"].dtype == tf.int64
        from sklearn.datasets import load_digits
        expected = np.bincount(load_digits().target) * size / 1797  # stratified split
        assert labels.min() == 0 and labels.max() == 9
        assert np.abs(np.bincount(labels) - expected).max() <= 1
        np.testing.assert_array_equal(batch["index"], np.arange(size))
    with pytest.raises(ValueError, match="validation"):
        S.load_split("digits", "validation", None)


def _read_all(ds):
    batch = next(iter(ds.batch(100_000)))
    return {k: v.numpy() for k, v in batch.items()}


def test_digits_process_slices_disjoint_and_covering():
    full = _read_all(S.load_split("digits", "train", None)[0])
    parts = [S.load_split("digits", "train", None, i, 2) for i in range(2)]
    assert [n for _, n, _ in parts] == S.slice_sizes("digits", "train", None, 2) == [718, 719]
    got = [_read_all(ds) for ds, _, _ in parts]
    np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), full["image"])
    np.testing.assert_array_equal(np.concatenate([g["label"] for g in got]), full["label"])
    # Stable dataset indices: the second slice starts where the first ends.
    np.testing.assert_array_equal(np.concatenate([g["index"] for g in got]), np.arange(1437))
    assert S.slice_offset("digits", "train", None, 1, 2) == 718


def test_mnist_process_slices_disjoint_and_covering(shared_tfds_dir):
    split = "test[:1000]"
    full = _read_all(S.load_split("mnist", split, shared_tfds_dir)[0])
    assert full["image"].shape == (1000, 28, 28, 3)  # grayscale tiled to 3 channels
    parts = [_read_all(S.load_split("mnist", split, shared_tfds_dir, i, 2)[0]) for i in range(2)]
    assert [len(p["label"]) for p in parts] == [500, 500]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), full["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), full["label"])


def test_slices_across_files_keep_the_stored_order(shared_tfds_dir):
    """CIFAR-10's train split is 4 files of 12,500: a range spanning two of them, read in 2 process
    slices, gives the examples of one read of the whole range, each file's records in turn (TFDS's
    default interleaves the files a slice spans, so an example's index, which labels files and
    per-example state are keyed by, would depend on the number of processes)."""
    split = "train[12000:13000]"
    full = _read_all(S.load_split("cifar10", split, shared_tfds_dir)[0])
    parts = [_read_all(S.load_split("cifar10", split, shared_tfds_dir, i, 2)[0]) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), full["image"])
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), np.arange(1000))
    import tensorflow_datasets as tfds
    builder = tfds.builder("cifar10", data_dir=shared_tfds_dir)
    stored = [e["image"] for part in ("train[12000:12500]", "train[12500:13000]")  # each within one file
              for e in builder.as_dataset(split=part, shuffle_files=False,
                                          decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator()]
    np.testing.assert_array_equal(full["image"], np.array(stored, dtype=object))


def test_cifar10_loads_offline(shared_tfds_dir):
    ds, n, info = S.load_split("cifar10", "test", shared_tfds_dir)
    assert n == 10_000 and info == {"num_classes": 10, "image_shape": (32, 32, 3), "is_jpeg": True,
                                    "num_examples_total": 10_000}
    ex = next(iter(ds))
    image = tf.io.decode_jpeg(ex["image"], channels=3, dct_method="INTEGER_ACCURATE").numpy()
    assert image.shape == (32, 32, 3) and 0 <= int(ex["label"]) < 10
    # Eval: 32 px images pass through unchanged (accurate decode), then are normalised.
    cfg = _cfg(dataset="cifar10", data_dir=shared_tfds_dir, train_split="train[:1%]", image_size=32)
    batch = next(P.eval_iterator(cfg, "test[:256]", global_batch_size=128, process_index=0, process_count=1))
    assert batch["image"].shape == (128, 32, 32, 3) and batch["mask"].all()
    np.testing.assert_allclose(batch["image"][0], (image / 255.0 - MEAN) / STD, atol=1e-5)
    assert batch["label"][0] == ex["label"].numpy() and batch["label"].dtype == np.int32
    first = next(P.pretrain_iterator(cfg, global_batch_size=64, seed=0, process_index=0, process_count=1,
                                     jit_augment=False))
    assert [v.shape for v in first["views"]] == [(64, 32, 32, 3)] * 2 and first["label"].shape == (64,)


# ---------------------------------------------------------------------------------- errors

def test_unknown_dataset_is_a_clear_error(shared_tfds_dir):
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar_ten'.*digits.*config.data.dataset"):
        S.load_split("cifar_ten", "train", shared_tfds_dir)


def test_bad_data_dir_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*--config.data.data_dir=.*tfds build"):
        S.load_split("cifar10", "train", missing)
    with pytest.raises(FileNotFoundError, match=r"not prepared in data_dir=.*tfds build"):
        S.load_split("cifar10", "train", str(tmp_path))


def test_bad_split_batch_and_config_are_clear_errors(shared_tfds_dir):
    with pytest.raises(ValueError, match="Unknown split 'validation'.*train"):
        S.load_split("cifar10", "validation", shared_tfds_dir)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        P.steps_per_epoch(_cfg(), 64, 3)
    cfg = _cfg()
    del cfg["views"]
    with pytest.raises(ValueError, match="config.data.views"):
        P.pretrain_iterator(cfg, global_batch_size=64, seed=0, process_index=0, process_count=1)


# ---------------------------------------------------------------------------------- pretrain

def test_pretrain_iterator_shapes_determinism_and_exact_resume():
    cfg = _cfg()
    spe = P.steps_per_epoch(cfg, 256, 1)
    assert spe == 1437 // 256 == 5
    k = spe + 2  # resume inside the second epoch

    def iterator(seed=3, start_step=0):
        # XLA or not does not change which batch comes when; without it the test compiles nothing.
        return P.pretrain_iterator(cfg, global_batch_size=256, seed=seed, start_step=start_step,
                                   process_index=0, process_count=1, jit_augment=False)

    fresh = _take(iterator(), k + 1)
    b = fresh[0]
    assert set(b) == {"views", "label", "index"} and len(b["views"]) == 2
    for v in b["views"]:
        assert v.shape == (256, 16, 16, 3) and v.dtype == np.float32
    assert b["label"].shape == (256,) and b["label"].dtype == np.int32
    assert not np.allclose(b["views"][0], b["views"][1])
    again = _take(iterator(), 2)
    _assert_batches_equal(again[0], fresh[0])
    _assert_batches_equal(again[1], fresh[1])
    assert not np.array_equal(next(iterator(seed=4))["label"], b["label"])
    for start in (2, k):
        _assert_batches_equal(next(iterator(start_step=start)), fresh[start])


def test_num_views_cycles_view_configs():
    it = P.pretrain_iterator(_cfg(image_size=8), global_batch_size=32, seed=0, num_views=3,
                             process_index=0, process_count=1, jit_augment=False)
    assert [v.shape for v in next(it)["views"]] == [(32, 8, 8, 3)] * 3


def test_multi_process_pretrain_batches():
    cfg = _cfg(image_size=8)
    spe = P.steps_per_epoch(cfg, 64, 2)
    assert spe == min(718, 719) // 32 == 22
    firsts = [next(P.pretrain_iterator(cfg, global_batch_size=64, seed=0, process_index=i, process_count=2,
                                       jit_augment=False)) for i in range(2)]
    assert all(f["views"][0].shape == (32, 8, 8, 3) for f in firsts)
    assert not np.allclose(firsts[0]["views"][0], firsts[1]["views"][0])


def _indexed_digits():
    images, _ = S._digits_arrays()["train"]
    return images, np.arange(len(images), dtype=np.int64)  # label = index: batches name their examples


def test_in_memory_epoch_is_a_permutation_and_batches_equal_augment_view():
    images, index = _indexed_digits()
    b, spe, size, seed = 100, 14, 12, 7
    ds = P.pretrain_dataset(None, {"is_jpeg": False}, arrays=(images, index), views=VIEWS, image_size=size,
                            mean=MEAN, std=STD, local_batch=b, steps_per_epoch=spe, seed=seed)
    batches = _take(ds.as_numpy_iterator(), spe + 1)
    epoch0 = np.concatenate([x["label"] for x in batches[:spe]])
    assert len(set(epoch0)) == spe * b  # no example twice within an epoch
    assert not np.array_equal(batches[spe]["label"], batches[0]["label"])  # epochs reshuffle
    for step, row in ((0, 0), (3, 57), (spe, 99)):
        epoch, pos = divmod(step * b + row, spe * b)
        example = images[batches[step]["label"][row]]
        for v, cfg in enumerate(VIEWS):
            ref = A.augment_view(example, P.augmentation_seed(seed, 0, epoch, pos, v), cfg, size,
                                 mean=MEAN, std=STD)
            np.testing.assert_allclose(batches[step]["views"][v][row], ref, atol=1e-4)


def test_streaming_jpeg_path_matches_augment_view_and_resumes_exactly():
    rng = np.random.RandomState(0)
    jpegs = [tf.io.encode_jpeg(rng.randint(0, 256, (rng.randint(30, 50), rng.randint(30, 50), 3))
                               .astype(np.uint8), quality=90).numpy() for _ in range(40)]
    src = tf.data.Dataset.from_tensor_slices({"image": jpegs, "label": np.arange(40, dtype=np.int64),
                                              "index": np.arange(40, dtype=np.int64)})
    b, spe, size, seed = 8, 5, 24, 1

    def build(start):
        return P.pretrain_dataset(src, {"is_jpeg": True}, arrays=None, views=VIEWS, image_size=size, mean=MEAN,
                                  std=STD, local_batch=b, steps_per_epoch=spe, seed=seed, start_step=start,
                                  shuffle_buffer=16).as_numpy_iterator()

    fresh = _take(build(0), spe + 2)
    assert len(set(np.concatenate([x["label"] for x in fresh[:spe]]))) == spe * b
    _assert_batches_equal(next(build(spe + 1)), fresh[spe + 1])
    for step, row in ((0, 0), (spe + 1, 5)):
        epoch, pos = divmod(step * b + row, spe * b)
        jpeg = jpegs[fresh[step]["label"][row]]
        for v, cfg in enumerate(VIEWS):
            ref = A.augment_view(jpeg, P.augmentation_seed(seed, 0, epoch, pos, v), cfg, size,
                                 is_jpeg_bytes=True, mean=MEAN, std=STD)
            np.testing.assert_allclose(fresh[step]["views"][v][row], ref, atol=1e-4)


# -------------------------------------------------------------------------------------- eval

def test_eval_iterator_padding_mask_and_count():
    cfg = _cfg(image_size=8)
    assert P.num_eval_examples(cfg, "test") == 360
    images, labels = S._digits_arrays()["test"]
    batches = list(P.eval_iterator(cfg, "test", global_batch_size=100, process_index=0, process_count=1))
    assert len(batches) == P.num_eval_batches(cfg, "test", 100, 1) == 4
    assert all(x["image"].shape == (100, 8, 8, 3) and x["mask"].dtype == bool for x in batches)
    mask = np.concatenate([x["mask"] for x in batches])
    assert mask.sum() == 360 and mask[:360].all() and not mask[360:].any()
    np.testing.assert_array_equal(np.concatenate([x["label"] for x in batches])[:360], labels)
    assert (batches[-1]["image"][60:] == 0).all() and (batches[-1]["label"][60:] == 0).all()
    np.testing.assert_allclose(batches[0]["image"], (images[:100] / 255.0 - MEAN) / STD, atol=1e-5)
    per_process = [list(P.eval_iterator(cfg, "test", global_batch_size=100, process_index=i, process_count=2))
                   for i in range(2)]
    assert [len(p) for p in per_process] == [4, 4]  # same number of steps on every process
    masks = [np.concatenate([x["mask"] for x in p]) for p in per_process]
    assert [m.sum() for m in masks] == [180, 180]
    got = np.concatenate([np.concatenate([x["label"] for x in p])[m] for p, m in zip(per_process, masks)])
    np.testing.assert_array_equal(got, labels)


def test_eval_preprocess_centre_crop_for_larger_images():
    rng = np.random.RandomState(1)
    image = rng.randint(0, 256, (60, 80, 3)).astype(np.uint8)
    out = P.eval_preprocess(tf.constant(image), 32, False, (0.0,) * 3, (1.0,) * 3)
    side = round(0.875 * 60)  # resize the short side to 32 / 0.875, centre crop 32
    y, x = (60 - side) // 2, (80 - side) // 2
    ref = A.resize_decoded_crop(tf.constant(image[y:y + side, x:x + side]), 32)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    jpeg = tf.io.encode_jpeg(image, quality=90)
    decoded = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
    np.testing.assert_allclose(P.eval_preprocess(jpeg, 32, True, MEAN, STD),
                               P.eval_preprocess(decoded, 32, False, MEAN, STD), atol=1e-4)


def test_missing_data_field_is_a_clear_error():
    """Fields are read strictly (defaults live in presets.base_config): a missing one is named."""
    cfg = _cfg()
    del cfg["data_dir"]
    with pytest.raises(ValueError, match=r"no key 'data_dir'; set --config.data.data_dir="):
        P.steps_per_epoch(cfg, 64, 1)
