"""Where examples come from: scikit-learn's digits (in memory) or a prepared TFDS dataset.

Every source yields ``{'image', 'label', 'index'}`` for one process's deterministic, contiguous
slice of a split; each process reads only its own slice. TFDS is never allowed to download.
"""
import functools
import os
from typing import Optional, Tuple

import numpy as np

from ssl_jax.data.tf_host import tf  # before tfds: TF's first import is tf_host's

import tensorflow_datasets as tfds  # noqa: E402

LOCAL_DATASETS = ("digits",)
_DIGITS_TEST_SIZE = 360
_FIX_DATA_DIR = ("Set --config.data.data_dir=DIR to a TFDS data directory that holds the prepared "
                 "dataset (DIR/<name>/<version>/...), or prepare it there with "
                 "`tfds build <name> --data_dir=DIR` (ImageNet needs its archives placed in the "
                 "manual_dir first). Nothing is downloaded by this library.")


# -------------------------------------------------------------------------------------- digits

@functools.lru_cache(maxsize=None)
def _digits_arrays():
    """{'train': (images uint8 [1437, 8, 8, 3], labels int64), 'test': (..., 360 examples)}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=_DIGITS_TEST_SIZE,
                                              stratify=labels, random_state=0)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _digits_split(split: str):
    arrays = _digits_arrays()
    if split not in arrays:
        raise ValueError(f"Unknown split {split!r} of dataset 'digits'; it has 'train' "
                         f"({len(arrays['train'][1])} examples) and 'test' ({len(arrays['test'][1])}).")
    return arrays[split]


def _slice_bounds(n: int, process_index: int, process_count: int) -> Tuple[int, int]:
    """Contiguous even split of n examples; slice sizes differ by at most one."""
    return process_index * n // process_count, (process_index + 1) * n // process_count


# ---------------------------------------------------------------------------------------- TFDS

def _resolve_data_dir(data_dir: Optional[str]) -> str:
    if data_dir is None or data_dir == "":
        return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    return os.path.expanduser(str(data_dir))


def _prepared_names(data_dir: str, limit: int = 20):
    try:
        names = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(data_dir)
                       if tf.io.gfile.isdir(os.path.join(data_dir, d)) and not d.startswith(("_", ".")))
    except (tf.errors.OpError, OSError):
        return []
    return names if len(names) <= limit else names[:limit] + ["..."]


def _registered(dataset: str) -> bool:
    """Whether TFDS knows `dataset` (name[:version][/config]) without any data."""
    try:
        tfds.builder_cls(dataset.split(":")[0].split("/")[0])
    except Exception:  # DatasetNotFoundError and friends
        return False
    return True


@functools.lru_cache(maxsize=None)
def _builder(dataset: str, data_dir: Optional[str]):
    """A prepared TFDS builder, or one clear error naming the dataset, the data_dir and the fix."""
    ddir = _resolve_data_dir(data_dir)
    try:
        readable = tf.io.gfile.isdir(ddir)
    except tf.errors.OpError:
        readable = False
    if not readable and not _registered(dataset):  # a misspelt name is not a data_dir problem
        raise ValueError(
            f"Unknown dataset {dataset!r}: it is not one of the built-in datasets {list(LOCAL_DATASETS)} "
            "nor a registered TFDS dataset. Check the name in --config.data.dataset (a dataset of your "
            "own: prepare it in a TFDS data_dir and pass --config.data.data_dir).")
    if not readable:
        raise FileNotFoundError(
            f"Dataset {dataset!r}: the TFDS data_dir {ddir!r} does not exist or cannot be read. "
            + _FIX_DATA_DIR)
    try:
        builder = tfds.builder(dataset, data_dir=ddir)
    except Exception as e:  # DatasetNotFoundError and friends: not registered, not in data_dir
        prepared = _prepared_names(ddir)
        raise ValueError(
            f"Unknown dataset {dataset!r}: it is not one of the built-in datasets "
            f"{list(LOCAL_DATASETS)}, not a registered TFDS dataset, and not prepared in "
            f"data_dir={ddir!r} (which holds: {prepared or 'nothing'}). Check the name in "
            f"--config.data.dataset. ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Dataset {dataset!r} is not prepared in data_dir={ddir!r} "
            f"(found there: {_prepared_names(ddir) or 'nothing'}). " + _FIX_DATA_DIR)
    if "image" not in builder.info.features:
        raise ValueError(f"Dataset {dataset!r} has no 'image' feature "
                         f"(features: {list(builder.info.features.keys())}).")
    return builder


def _check_split(builder, dataset: str, split: str) -> int:
    """Number of examples of ``split`` (TFDS slice syntax allowed); a clear error if unknown."""
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:  # KeyError / ValueError / AssertionError depending on the syntax error
        raise ValueError(f"Unknown split {split!r} of dataset {dataset!r}; available splits: "
                         f"{list(builder.info.splits.keys())} (TFDS slicing like 'train[:10%]' works)."
                         ) from None


@functools.lru_cache(maxsize=None)
def _is_jpeg(dataset: str, data_dir: Optional[str]) -> bool:
    """Whether the stored images are JPEG: the feature's encoding, else the first record's magic."""
    builder = _builder(dataset, data_dir)
    feature = builder.info.features["image"]
    if feature.shape[-1] not in (3, None):
        return False  # the fused decode-and-crop path is for colour images
    encoding = getattr(feature, "encoding_format", None)
    if encoding is not None:
        return encoding == "jpeg"
    split = next(iter(builder.info.splits.keys()))
    ds = builder.as_dataset(split=f"{split}[:1]", decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))
    raw = next(iter(ds.take(1)))["image"].numpy()
    return raw[:2] == b"\xff\xd8"


def _tfds_info(dataset: str, split: str, data_dir: Optional[str]) -> dict:
    builder = _builder(dataset, data_dir)
    n = _check_split(builder, dataset, split)
    features = builder.info.features
    shape = tuple(features["image"].shape)
    label = features["label"] if "label" in features else None
    return {"num_classes": int(label.num_classes) if label is not None and hasattr(label, "num_classes") else None,
            "image_shape": shape[:2] + (3,),
            "is_jpeg": _is_jpeg(dataset, data_dir),
            "num_examples_total": n}


# --------------------------------------------------------------------------------------- public

def dataset_info(dataset: str, split: str, data_dir: Optional[str] = None) -> dict:
    """``{'num_classes', 'image_shape' (H, W, 3), 'is_jpeg', 'num_examples_total'}`` of a split."""
    if dataset == "digits":
        _, y = _digits_split(split)
        return {"num_classes": 10, "image_shape": (8, 8, 3), "is_jpeg": False,
                "num_examples_total": len(y)}
    return _tfds_info(dataset, split, data_dir)


def slice_sizes(dataset: str, split: str, data_dir: Optional[str], process_count: int) -> list:
    """Examples in each process's slice of ``split`` (they differ by at most one)."""
    if dataset == "digits":
        n = len(_digits_split(split)[1])
        return [b - a for a, b in (_slice_bounds(n, i, process_count) for i in range(process_count))]
    builder = _builder(dataset, data_dir)
    _check_split(builder, dataset, split)
    return [int(builder.info.splits[tfds.split_for_jax_process(
        split, process_index=i, process_count=process_count)].num_examples) for i in range(process_count)]


def slice_offset(dataset: str, split: str, data_dir: Optional[str], process_index: int,
                 process_count: int) -> int:
    """The dataset index of the first example of a process's slice (slices are contiguous)."""
    return int(sum(slice_sizes(dataset, split, data_dir, process_count)[:process_index]))


def load_split(dataset: str, split: str, data_dir: Optional[str] = None, process_index: int = 0,
               process_count: int = 1):
    """This process's slice of a split: ``(tf.data.Dataset, num_examples_in_slice, info)``.

    Elements are ``{'image', 'label': int64, 'index': int64}``; ``index`` is the example's stable
    dataset index: its position in the whole split (the slice's offset + its position in the
    slice). ``image`` is uint8 [H, W, 3] (grayscale tiled to 3 channels), or the encoded JPEG
    string when ``info['is_jpeg']`` (skip-decoding, so a crop can be decoded alone).
    The order is fixed: same call, same order. ``dataset='digits'`` is scikit-learn's digits
    (train 1437 / test 360, stratified, seed 0); any other name is read from TFDS in ``data_dir``.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    info = dataset_info(dataset, split, data_dir)
    if dataset == "digits":
        images, labels = _digits_split(split)
        lo, hi = _slice_bounds(len(labels), process_index, process_count)
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": images[lo:hi], "label": labels[lo:hi], "index": np.arange(lo, hi, dtype=np.int64)})
        return ds, hi - lo, info

    builder = _builder(dataset, data_dir)
    sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    n = int(builder.info.splits[sub].num_examples)
    offset = slice_offset(dataset, split, data_dir, process_index, process_count)
    decoders = {"image": tfds.decode.SkipDecoding()} if info["is_jpeg"] else None
    ds = builder.as_dataset(split=sub, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))
    has_label = "label" in builder.info.features

    def convert(i, ex):
        image = ex["image"]
        if not info["is_jpeg"] and image.shape[-1] == 1:
            image = tf.tile(image, [1, 1, 3])
        label = tf.cast(ex["label"], tf.int64) if has_label else tf.constant(-1, tf.int64)
        return {"image": image, "label": label, "index": i + offset}

    ds = ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, n, info
