"""Where examples come from: scikit-learn's digits (in memory) or a prepared TFDS dataset.

Every source yields ``{'image', 'label', 'index'}`` for one process's deterministic, contiguous
slice of a split; each process reads only its own slice. TFDS is never allowed to download.

Class subsets (``classes``: config.data.classes; every public function takes it): the split is
first filtered to the examples whose label is in ``classes``, then sliced over processes, so
the slices of a subset partition it and differ by at most one example. The subset is a dataset
of its own: its labels are remapped to 0..K-1 in the order given (``classes[k]`` -> k; a linear
probe has K outputs), ``index`` is the position in the filtered split, in the split's stored
(TFDS absolute) order, and ``dataset_info`` counts only its examples. Entries are class ids or,
for a TFDS ClassLabel with names, class names (ImageNet wnids, CIFAR-100 fine names).
Finding the subset costs one label-only pass over the split (cached per process: about 2 s for
CIFAR-10's train split; every record of the split is read, so on ImageNet it is a full read of
the split's files per process, minutes); then each process reads only the records between its
first and last kept example, sequentially (one file at a time: the order of the filtered split
must not depend on the number of processes), and drops the other classes' records. Streamed
datasets (ImageNet-100 from imagenet2012) are supported this way; for many epochs over a small
subset of a large dataset, a TFDS dataset prepared with only those classes reads less.
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


# ------------------------------------------------------------------------------- class subsets

_FIX_CLASSES = ("Set --config.data.classes (and data.eval_classes) to distinct class ids in [0, number of "
                "classes) (or the dataset's class names), e.g. \"(0, 1, 2)\"; () keeps every class.")


def _label_feature(dataset: str, data_dir: Optional[str]):
    """(number of classes or None, class names or None) of a dataset's label; ValueError without one."""
    if dataset == "digits":
        return 10, None
    features = _builder(dataset, data_dir).info.features
    if "label" not in features:
        raise ValueError(f"config.data.classes keeps a subset of classes, but dataset {dataset!r} has no "
                         f"'label' feature (features: {list(features.keys())}); set --config.data.classes=() "
                         "for an unlabelled dataset.")
    label = features["label"]
    num = getattr(label, "num_classes", None)
    names = list(getattr(label, "names", None) or []) or None
    return (int(num) if num else None), names


@functools.lru_cache(maxsize=None)
def _resolve_classes(dataset: str, data_dir: Optional[str], classes: tuple) -> tuple:
    """``classes`` as distinct int class ids (names looked up), checked against the dataset."""
    num, names = _label_feature(dataset, data_dir)
    out = []
    for c in classes:
        if isinstance(c, str) and names is not None and c in names:
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)):
            if c < 0 or (num is not None and c >= num):
                raise ValueError(f"config.data.classes holds class {c}, outside the {num} classes [0, {num}) "
                                 f"of {dataset!r}. " + _FIX_CLASSES)
            out.append(int(c))
        else:
            known = "" if names is None else f" nor one of its class names ({names[:5]}...)"
            raise ValueError(f"config.data.classes holds {c!r}, which is not a class id of {dataset!r}{known}. "
                             + _FIX_CLASSES)
    if len(set(out)) != len(out):
        repeated = sorted({c for c in out if out.count(c) > 1})
        raise ValueError(f"config.data.classes {tuple(classes)} names classes {repeated} more than once. "
                         + _FIX_CLASSES)
    return tuple(out)


def _absolute_range(builder, dataset: str, split: str) -> Tuple[str, int, int]:
    """(split name, first, end) of a split spec that is one contiguous range of one split."""
    _check_split(builder, dataset, split)
    (instr, *rest) = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    if rest:
        raise ValueError(f"A class subset (or a label pass) of {dataset!r} needs one contiguous range of one "
                         f"split, not {split!r}; set --config.data.train_split / test_split to one split "
                         "(slicing like 'train[:10%]' works) or --config.data.classes=().")
    start = instr.from_ or 0
    end = instr.to if instr.to is not None else int(builder.info.splits[instr.splitname].num_examples)
    return instr.splitname, int(start), int(end)


_SEQUENTIAL = dict(try_autocache=False, interleave_cycle_length=1)  # one file at a time: the stored order


@functools.lru_cache(maxsize=None)
def label_columns(dataset: str, split: str, data_dir: Optional[str] = None, keys: tuple = ("label",)) -> dict:
    """{key: int64 [N]} of the label features ``keys`` (e.g. CIFAR-100's 'label' and 'coarse_label')
    of every example of a split, in its stored order: one pass that decodes nothing else."""
    if dataset == "digits":
        if tuple(keys) != ("label",):
            raise ValueError(f"Dataset 'digits' has only the feature 'label', not {keys}.")
        return {"label": _digits_split(split)[1]}
    builder = _builder(dataset, data_dir)
    missing = [k for k in keys if k not in builder.info.features]
    if missing:
        raise ValueError(f"Dataset {dataset!r} has no feature {missing} (features: "
                         f"{list(builder.info.features.keys())}).")
    name, start, end = _absolute_range(builder, dataset, split)
    ds = builder.as_dataset(split=f"{name}[{start}:{end}]", shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({k: True for k in keys}),
                            read_config=tfds.ReadConfig(**_SEQUENTIAL))
    batches = list(ds.batch(8192).prefetch(2).as_numpy_iterator())
    return {k: np.concatenate([np.zeros([0], np.int64)] + [b[k].astype(np.int64) for b in batches]) for k in keys}


@functools.lru_cache(maxsize=None)
def _subset_rows(dataset: str, split: str, data_dir: Optional[str], classes: tuple) -> np.ndarray:
    """Positions (int64, increasing) in the split's stored order of the examples of ``classes``."""
    labels = label_columns(dataset, split, data_dir)["label"]
    rows = np.flatnonzero(np.isin(labels, np.asarray(classes, np.int64)))
    if rows.size == 0:
        raise ValueError(f"{dataset}:{split} holds no example of the classes {classes} of config.data.classes "
                         "(the subset is empty). " + _FIX_CLASSES)
    return rows.astype(np.int64)


def _remap_table(classes: tuple) -> np.ndarray:
    """int64 [max(classes) + 1]: table[classes[k]] = k, -1 for the classes left out."""
    table = np.full(max(classes) + 1, -1, np.int64)
    table[list(classes)] = np.arange(len(classes))
    return table


def _subset(dataset, split, data_dir, classes):
    """(resolved classes, kept rows) of a subset, or (None, None) for every class."""
    if not classes:
        return None, None
    resolved = _resolve_classes(dataset, data_dir, tuple(classes))
    return resolved, _subset_rows(dataset, split, data_dir, resolved)


# --------------------------------------------------------------------------------------- public

def dataset_info(dataset: str, split: str, data_dir: Optional[str] = None, classes=()) -> dict:
    """``{'num_classes', 'image_shape' (H, W, 3), 'is_jpeg', 'num_examples_total'}`` of a split; of
    its subset when ``classes`` is set (K classes, its examples; and 'classes': the ids kept)."""
    if dataset == "digits":
        _, y = _digits_split(split)
        info = {"num_classes": 10, "image_shape": (8, 8, 3), "is_jpeg": False, "num_examples_total": len(y)}
    else:
        info = _tfds_info(dataset, split, data_dir)
    resolved, rows = _subset(dataset, split, data_dir, classes)
    if resolved is None:
        return info
    return dict(info, num_classes=len(resolved), num_examples_total=len(rows), classes=resolved)


def slice_sizes(dataset: str, split: str, data_dir: Optional[str], process_count: int, classes=()) -> list:
    """Examples in each process's slice of ``split`` (of its subset ``classes``; they differ by at most one)."""
    _, rows = _subset(dataset, split, data_dir, classes)
    if rows is not None:
        n = len(rows)
        return [b - a for a, b in (_slice_bounds(n, i, process_count) for i in range(process_count))]
    if dataset == "digits":
        n = len(_digits_split(split)[1])
        return [b - a for a, b in (_slice_bounds(n, i, process_count) for i in range(process_count))]
    builder = _builder(dataset, data_dir)
    _check_split(builder, dataset, split)
    return [int(builder.info.splits[tfds.split_for_jax_process(
        split, process_index=i, process_count=process_count)].num_examples) for i in range(process_count)]


def slice_offset(dataset: str, split: str, data_dir: Optional[str], process_index: int,
                 process_count: int, classes=()) -> int:
    """The dataset index of the first example of a process's slice (slices are contiguous)."""
    return int(sum(slice_sizes(dataset, split, data_dir, process_count, classes)[:process_index]))


def load_split(dataset: str, split: str, data_dir: Optional[str] = None, process_index: int = 0,
               process_count: int = 1, classes=()):
    """This process's slice of a split: ``(tf.data.Dataset, num_examples_in_slice, info)``.

    Elements are ``{'image', 'label': int64, 'index': int64}``; ``index`` is the example's stable
    dataset index: its position in the whole split, or in the class subset (the slice's offset +
    its position in the slice). ``image`` is uint8 [H, W, 3] (grayscale tiled to 3 channels), or the encoded JPEG
    string when ``info['is_jpeg']`` (skip-decoding, so a crop can be decoded alone).
    The order is fixed: same call, same order. ``dataset='digits'`` is scikit-learn's digits
    (train 1437 / test 360, stratified, seed 0); any other name is read from TFDS in ``data_dir``.
    ``classes``: only those classes, labels remapped (module docstring).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    info = dataset_info(dataset, split, data_dir, classes)
    if info.get("classes"):
        return _load_subset(dataset, split, data_dir, process_index, process_count, info)
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
    # One file at a time, in the stored order: TFDS's default interleaves the slice's files, so
    # the position of an example (its index, which per-example state and labels files are keyed
    # by) would depend on how many files the slice spans, i.e. on the number of processes
    # (CIFAR-10's train split, 4 files: two halves read apart != one read of the whole).
    ds = builder.as_dataset(split=sub, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(**_SEQUENTIAL))
    has_label = "label" in builder.info.features
    return _indexed(ds, info, offset, _label if has_label else _no_label), n, info


# Named functions, not two lambdas on one line: AutoGraph cannot tell such lambdas apart in the
# source and printed a warning for every dataset built.
def _label(ex):
    return tf.cast(ex["label"], tf.int64)


def _no_label(ex):
    return tf.constant(-1, tf.int64)


def _indexed(ds, info, offset, label_of):
    """TFDS records as ``{'image', 'label': label_of(record), 'index': offset + position}``, a
    grayscale image tiled to 3 channels: the one conversion of the full-split and subset paths."""
    def convert(i, ex):
        image = ex["image"]
        if not info["is_jpeg"] and image.shape[-1] == 1:
            image = tf.tile(image, [1, 1, 3])
        return {"image": image, "label": label_of(ex), "index": i + offset}

    return ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _load_subset(dataset, split, data_dir, process_index, process_count, info):
    """load_split of a class subset: filter the split, then slice the filtered examples."""
    classes = info["classes"]
    rows = _subset_rows(dataset, split, data_dir, classes)
    lo, hi = _slice_bounds(len(rows), process_index, process_count)
    table = _remap_table(classes)
    if dataset == "digits":
        images, labels = _digits_split(split)
        mine = rows[lo:hi]
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": images[mine], "label": table[labels[mine]], "index": np.arange(lo, hi, dtype=np.int64)})
        return ds, hi - lo, info
    builder = _builder(dataset, data_dir)
    name, start, _ = _absolute_range(builder, dataset, split)
    # The records from this slice's first to its last kept example, in the stored order (a slice
    # without examples, more processes than examples, reads one record and takes none).
    first, end = (int(rows[lo]), int(rows[hi - 1]) + 1) if hi > lo else (int(rows[0]), int(rows[0]) + 1)
    decoders = {"image": tfds.decode.SkipDecoding()} if info["is_jpeg"] else None
    ds = builder.as_dataset(split=f"{name}[{start + first}:{start + end}]", shuffle_files=False,
                            decoders=decoders, read_config=tfds.ReadConfig(**_SEQUENTIAL))
    remap = tf.constant(table)

    def remapped(ex):  # the subset's label (-1: another class), computed once per record
        label = tf.cast(ex["label"], tf.int64)
        inside = tf.logical_and(label >= 0, label < len(table))
        return dict(ex, label=tf.where(inside, tf.gather(remap, tf.clip_by_value(label, 0, len(table) - 1)), -1))

    ds = _indexed(ds.map(remapped).filter(lambda ex: ex["label"] >= 0), info, lo, lambda ex: ex["label"])
    return ds.apply(tf.data.experimental.assert_cardinality(hi - lo)) if hi > lo else ds.take(0), hi - lo, info
