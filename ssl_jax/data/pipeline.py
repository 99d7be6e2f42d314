"""Host input pipelines: infinite, exactly resumable multi-view pretraining batches and padded eval passes.

Determinism: epoch e of process p reads its slice in an order seeded by (seed, p, e), and the
augmentation of the example at position i of that epoch, view v, is seeded by (seed, p, e, i, v).
Batch k is therefore a pure function of (seed, k), so ``start_step=k`` resumes exactly.

Two paths, chosen per dataset:
* in memory (images of static shape, decoded slice <= ``_IN_MEMORY_MAX_BYTES``: digits, CIFAR,
  MNIST): the slice is decoded once into a uint8 array; an epoch is a full permutation; a batch
  is cropped and resized from the array in one ``crop_and_resize`` call per view.
* streaming (ImageNet-sized): a ``shuffle_buffer``-sized shuffle of the TFDS stream per epoch;
  each JPEG is decoded once (whole; accurate IDCT, the pixels ``decode_and_crop_jpeg`` of each
  window gives, at half the cost of decoding two windows), all its views are cut and resized from
  it, then flip, colour jitter and grayscale run per example (``augment.make_example_pre_blur_fn``,
  XLA with branches), and blur, solarize and normalize per batch
  (``augment.make_view_post_fn``). Resuming replays (reads, never decodes) the records of the
  current epoch before ``start_step``.
In both, each example costs one stateless RNG call per view (``augment.view_uniforms``); in
memory, the decisions, crop windows and every image op after the crop run per batch as
vectorised tensor ops, XLA-compiled (``augment.make_view_ops_fn``).

Heavy augmentations (DSSL): ``view_plan`` lists, per output view, the standard view it is made
from and a heavy policy (``ssl_jax.data.heavy``) applied on top of it, on the standard view's
uint8 pixels after all its standard ops and before normalisation. Two output views may share a
standard view: DSSL's harder views t̂(v), t̂'(v') are derived from v and v', not from the image.
Each heavy view has its own seed (seed, p, e, i, HEAVY_SEED_OFFSET + output view).

Multi-crop (SwAV, DINO): a view config may set ``size`` (pixels; default ``data.image_size``), e.g.
2 global views of 224 px and 10 local views of 96 px. Each view is its own array in ``views``, in
view order, with its own static shape [b, size_v, size_v, 3]; its blur kernel follows size_v.
"""
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from ssl_jax.data.tf_host import tf

from ssl_jax.data import augment, heavy, sources

_IN_MEMORY_MAX_BYTES = 2 << 30
HEAVY_SEED_OFFSET = 1 << 20  # view ids of the heavy ops' seeds: never those of standard views


def _fields(data_cfg: Mapping[str, Any], *keys: str) -> tuple:
    """The values of `keys`, read strictly (defaults: ssl_jax.presets.base_config); a missing
    one is a clear error naming the field."""
    for key in keys:
        if key not in data_cfg:
            raise ValueError(f"The data config has no key {key!r}; set --config.data.{key}=... (or "
                             "start the config from ssl_jax.presets.base_config).")
    return tuple(data_cfg[key] for key in keys)


def classes(data_cfg: Mapping[str, Any]) -> tuple:
    """``data_cfg.classes`` as a tuple: the class ids (or names) a run keeps, () = every class.

    The one optional data field (a data config written before it existed keeps every class).
    See ssl_jax.data.sources: the subset's labels are 0..K-1 in this order."""
    value = data_cfg.get("classes", ()) if hasattr(data_cfg, "get") else ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"config.data.classes={value!r} must be a tuple of class ids, e.g. \"(0, 1, 2)\" "
                         "(() keeps every class).")
    return tuple(value)


def split_info(data_cfg: Mapping[str, Any], split: Optional[str] = None) -> dict:
    """sources.dataset_info of ``split`` (default: the train split) with the config's classes."""
    dataset, data_dir, train_split = _fields(data_cfg, "dataset", "data_dir", "train_split")
    return sources.dataset_info(dataset, split or train_split, data_dir, classes(data_cfg))


def training_fingerprint(data_cfg: Mapping[str, Any]) -> dict:
    """What per-example files and state are indexed by: the training set's name, split and size,
    and, for a class subset, its class ids as 'data_classes' (a list; absent for every class, as
    in files written before subsets), so a file of a subset is never taken for the full set or
    another subset, nor the reverse."""
    info = split_info(data_cfg)
    out = {"dataset": str(data_cfg["dataset"]), "split": str(data_cfg["train_split"]),
           "num_examples": int(info["num_examples_total"])}
    if info.get("classes"):
        out["data_classes"] = [int(c) for c in info["classes"]]
    return out


def describe_training_set(fingerprint: dict) -> str:
    """'dataset:split (N examples[, classes (...)])' of a training_fingerprint."""
    subset = f", classes {tuple(fingerprint['data_classes'])}" if "data_classes" in fingerprint else ""
    return f"{fingerprint['dataset']}:{fingerprint['split']} ({fingerprint['num_examples']} examples{subset})"


def slice_range(data_cfg: Mapping[str, Any], process_index: int, process_count: int) -> tuple:
    """(dataset index of the first example, number of examples) of a process's train-split slice."""
    dataset, split, data_dir = _fields(data_cfg, "dataset", "train_split", "data_dir")
    c = classes(data_cfg)
    return (sources.slice_offset(dataset, split, data_dir, process_index, process_count, c),
            sources.slice_sizes(dataset, split, data_dir, process_count, c)[process_index])


def _processes(process_index, process_count):
    if process_index is None or process_count is None:
        import jax  # only for the defaults; the pipeline itself is TF

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                         f"{process_count} processes; make it a multiple of {process_count}.")
    return global_batch_size // process_count


def _options() -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.autotune.enabled = True
    opts.experimental_optimization.map_parallelization = True
    opts.threading.max_intra_op_parallelism = 1  # parallelism comes from parallel map calls
    return opts


def steps_per_epoch(data_cfg: Mapping[str, Any], global_batch_size: int,
                    process_count: Optional[int] = None) -> int:
    """Steps per epoch of ``pretrain_iterator``: the smallest process slice // local batch (same on all)."""
    _, process_count = _processes(0, process_count)
    b = _local_batch(global_batch_size, process_count)
    sizes = sources.slice_sizes(*_fields(data_cfg, "dataset", "train_split", "data_dir"), process_count,
                                classes(data_cfg))
    return min(sizes) // b


def _view_cfgs(data_cfg, num_views: int) -> list:
    (views,) = _fields(data_cfg, "views")
    views = list(views)
    if not views:
        raise ValueError("config.data.views is empty; give one view config per view.")
    for v in views:
        augment.check_view_cfg(v)
    # num_views > len(views) cycles through the given configs.
    return [dict(views[i % len(views)]) for i in range(num_views)]


@functools.lru_cache(maxsize=4)
def _in_memory_slice(dataset, split, data_dir, process_index, process_count, kept=()):
    """The decoded slice as (uint8 [n, H, W, 3], int64 [n]), decoded once per process (of the
    class subset `kept`)."""
    ds, n, info = sources.load_split(dataset, split, data_dir, process_index, process_count, kept)
    decode = _decoder(info)
    ds = ds.map(lambda ex: (decode(ex["image"]), ex["label"]), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).batch(4096).prefetch(2)
    images, labels = [], []
    for x, y in ds.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"{dataset}:{split} is empty for process {process_index}/{process_count}.")
    return np.concatenate(images), np.concatenate(labels)


def _decoder(info):
    shape = tuple(info["image_shape"])

    def decode(image):
        if info["is_jpeg"]:
            image = tf.io.decode_jpeg(image, channels=3, dct_method="INTEGER_ACCURATE")
        return tf.ensure_shape(image, [d if d else None for d in shape])

    return decode


def _use_memory(info, n: int) -> bool:
    shape = info["image_shape"]
    return all(shape) and n * int(np.prod(shape)) <= _IN_MEMORY_MAX_BYTES


def pretrain_iterator(data_cfg: Mapping[str, Any], *, global_batch_size: int, seed: int, start_step: int = 0,
                      num_views: int = 2, view_plan: Optional[Sequence[tuple]] = None,
                      process_index: Optional[int] = None, process_count: Optional[int] = None,
                      jit_augment: bool = True,
                      epoch_order: Optional[Callable[[int], np.ndarray]] = None) -> Iterator[dict]:
    """Infinite iterator of ``{'views': (float32 [b, S_v, S_v, 3], ...), 'label': int32 [b],
    'index': int32 [b]}`` (NumPy); ``index`` is each example's stable dataset index (its position
    in the whole split), so every index appears once per epoch over all processes.

    b = global_batch_size // process_count. Reads ``dataset, data_dir, train_split, image_size,
    views, mean, std, shuffle_buffer`` and ``classes`` (optional) from ``data_cfg``. View v uses
    ``views[v % len(views)]`` and is S_v = that config's ``size`` px if it sets one (multi-crop
    local crops), else ``image_size``.
    Full batches only (drop remainder); ``steps_per_epoch`` gives their number per epoch. The first
    batch is the one an uninterrupted iterator yields at step ``start_step``.
    ``jit_augment`` compiles the per-batch ops with XLA (several times faster on CPU).
    ``view_plan``: per output view (standard view index, heavy policy spec or ''), replacing
    ``num_views``; default ``num_views`` plain standard views (as made by
    a method's ``view_plan``: ssl_jax.methods.base and ssl_jax.methods.dssl).
    ``epoch_order(epoch)``: the examples of that epoch, in order, as dataset indices of this
    process's slice (at least ``steps_per_epoch`` batches of them; e.g. DeepCluster's uniform
    sampling over pseudo-classes); None: a seeded permutation. It must be a pure function of the
    epoch (exact resume). In memory the epoch follows it row by row; streamed, the epoch holds
    exactly its examples, each as many times as drawn, in the stream's shuffled order (see
    ``pretrain_dataset``).
    """
    plan = _checked_plan(view_plan, num_views)
    pi, pc = _processes(process_index, process_count)
    b = _local_batch(global_batch_size, pc)
    dataset, split, data_dir = _fields(data_cfg, "dataset", "train_split", "data_dir")
    image_size, mean, std, shuffle_buffer = _fields(data_cfg, "image_size", "mean", "std", "shuffle_buffer")
    kept = classes(data_cfg)
    spe = steps_per_epoch(data_cfg, global_batch_size, pc)
    if spe < 1:
        raise ValueError(f"The local batch {b} is larger than this process's slice of {dataset}:{split} "
                         f"({min(sources.slice_sizes(dataset, split, data_dir, pc, kept))} examples); "
                         "lower --config.global_batch_size.")
    ds_src, n, info = sources.load_split(dataset, split, data_dir, pi, pc, kept)
    arrays = _in_memory_slice(dataset, split, data_dir, pi, pc, kept) if _use_memory(info, n) else None
    offset = sources.slice_offset(dataset, split, data_dir, pi, pc, kept)
    ds = pretrain_dataset(
        ds_src, info, arrays=arrays, views=_view_cfgs(data_cfg, 1 + max(k for k, _ in plan)),
        image_size=int(image_size), mean=tuple(mean), std=tuple(std), local_batch=b,
        steps_per_epoch=spe, seed=seed, process_index=pi, start_step=start_step,
        shuffle_buffer=int(shuffle_buffer), jit_augment=jit_augment, view_plan=plan,
        example_index=None if arrays is None else offset + np.arange(len(arrays[1])), stream_offset=offset,
        epoch_order=None if epoch_order is None else (lambda e: np.asarray(epoch_order(e)) - offset))
    return ds.as_numpy_iterator()


def _checked_plan(view_plan, num_views: int) -> tuple:
    """The view plan as ((standard view, policy spec), ...), checked; default: plain views."""
    if view_plan is None:
        return tuple((v, "") for v in range(num_views))
    plan = tuple((int(k), str(spec or "")) for k, spec in view_plan)
    used = sorted({k for k, _ in plan})
    if not plan or used != list(range(len(used))):
        raise ValueError(f"view_plan {view_plan!r} must use the standard views 0..K-1, each at least once.")
    for _, spec in plan:
        if spec:
            heavy.parse_policy(spec)  # a bad spec fails here, before any data is read
    return plan


def class_balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced `fraction` of `labels`: from each class
    round(fraction * its size) examples (at least one), chosen by a seeded permutation."""
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]; e.g. 0.01 for 1% of the labels.")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen))


def subset_iterator(data_cfg: Mapping[str, Any], indices, *, global_batch_size: int, seed: int,
                    start_step: int = 0, process_index: Optional[int] = None,
                    process_count: Optional[int] = None, jit_augment: bool = True) -> tuple[Iterator[dict], int]:
    """(infinite iterator, steps per epoch) of augmented batches of ``data.views[0]`` over the
    examples ``indices`` of this process's slice of the train split (label-fraction
    fine-tuning), from batch ``start_step`` on. In-memory datasets only: for ImageNet use a TFDS subset dataset
    (``imagenet2012_subset/1pct``) with the plain iterator."""
    pi, pc = _processes(process_index, process_count)
    b = _local_batch(global_batch_size, pc)
    dataset, split, data_dir = _fields(data_cfg, "dataset", "train_split", "data_dir")
    image_size, mean, std = _fields(data_cfg, "image_size", "mean", "std")
    kept = classes(data_cfg)
    ds_src, n, info = sources.load_split(dataset, split, data_dir, pi, pc, kept)
    if not _use_memory(info, n):
        raise ValueError(f"A label subset of {dataset} needs the in-memory path (small images); "
                         "for ImageNet use --config.data.dataset=imagenet2012_subset/1pct (or /10pct), "
                         "the SimCLR subsets, with label_fraction=1.")
    images, labels = _in_memory_slice(dataset, split, data_dir, pi, pc, kept)
    indices = np.asarray(indices)
    spe = len(indices) // b
    if spe < 1:
        raise ValueError(f"The label subset has {len(indices)} examples on this process, fewer than the "
                         f"local batch {b}; lower the batch size.")
    ds = pretrain_dataset(
        ds_src, info, arrays=(images[indices], labels[indices]), views=_view_cfgs(data_cfg, 1),
        image_size=int(image_size), mean=tuple(mean), std=tuple(std), local_batch=b,
        steps_per_epoch=spe, seed=seed, process_index=pi, start_step=start_step, jit_augment=jit_augment,
        example_index=sources.slice_offset(dataset, split, data_dir, pi, pc, kept) + indices)
    return ds.as_numpy_iterator(), spe


def train_labels(data_cfg: Mapping[str, Any], process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> np.ndarray:
    """Labels of this process's slice of the train split (in-memory datasets; of the subset's
    classes, remapped to 0..K-1, with data.classes)."""
    pi, pc = _processes(process_index, process_count)
    dataset, split, data_dir = _fields(data_cfg, "dataset", "train_split", "data_dir")
    return _in_memory_slice(dataset, split, data_dir, pi, pc, classes(data_cfg))[1]


def augmentation_seed(seed: int, process_index, epoch, position, view: int) -> tf.Tensor:
    """The seed [2] of view ``view`` of the example at ``position`` of ``epoch`` (on one process).

    (key, position) with key = a hash of (seed, process_index, epoch, view): the pipeline computes
    key once per epoch and view, so each example costs one ``stack``.
    """
    return tf.stack([_view_key(seed, process_index, epoch, view), tf.cast(position, tf.int64)])


def _view_key(seed: int, process_index, epoch, view: int) -> tf.Tensor:
    root = augment.fold_in(tf.constant([int(seed), 0], tf.int64), process_index)
    return augment.fold_in(augment.fold_in(root, epoch), view)[0]


def _per_view(make_fn, views: Sequence[Mapping]) -> list:
    """``make_fn(cfg)`` for each view, one function shared by views with equal configs.

    Multi-crop repeats one config for its local views (DINO: 10); sharing the function means one
    XLA compilation for all of them instead of one each. ``size`` is left out of the key: it is
    in the input's static shape, for which a compiled function specialises anyway.
    """
    made, out = {}, []
    for cfg in views:
        key = repr(sorted((k, v) for k, v in cfg.items() if k != "size"))
        if key not in made:
            made[key] = make_fn(cfg)
        out.append(made[key])
    return out


def pretrain_dataset(ds_src: tf.data.Dataset, info: Mapping[str, Any], *, arrays, views: Sequence[Mapping],
                     image_size: int, mean, std, local_batch: int, steps_per_epoch: int, seed: int,
                     process_index: int = 0, start_step: int = 0, shuffle_buffer: int = 10_000,
                     jit_augment: bool = True, view_plan: Optional[Sequence[tuple]] = None,
                     example_index: Optional[np.ndarray] = None, stream_offset: int = 0,
                     epoch_order: Optional[Callable[[int], np.ndarray]] = None) -> tf.data.Dataset:
    """The tf.data graph behind ``pretrain_iterator`` for a given source.

    ``arrays=(uint8 [n, H, W, 3], labels [n])`` selects the in-memory path (``ds_src`` unused),
    ``example_index`` [n] the dataset index of each row (default: the row), and
    ``epoch_order(epoch)`` the rows of an epoch in order (default: a seeded permutation);
    ``arrays=None`` streams ``ds_src`` (elements ``{'image': uint8 or JPEG string, 'label', 'index'}``,
    row r having index ``stream_offset + r``). A streamed ``epoch_order`` has no random access to
    follow: each example is repeated as many times as the order draws it (0 for those it leaves
    out) before the epoch's shuffle, so the epoch holds exactly the order's examples with their
    multiplicities, in an order mixed within ``shuffle_buffer`` (DeepCluster's sampler on
    ImageNet). Both paths resume exactly.
    View v comes out ``augment.view_size(views[v], image_size)`` px. ``view_plan`` (see
    ``pretrain_iterator``) maps the standard views ``views`` to the output views.
    """
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0.")
    for cfg in views:
        augment.check_view_cfg(cfg)
    b, num_views = int(local_batch), len(views)
    plan = _checked_plan(view_plan, num_views)
    finish = _heavy_finisher(plan, mean, std)
    if finish is not None:  # the standard ops stop before normalisation; `finish` normalises
        mean = std = None
    sizes = [augment.view_size(cfg, image_size) for cfg in views]  # static, per view
    per_epoch = steps_per_epoch * b
    start_epoch, offset = divmod(int(start_step) * b, per_epoch)
    order_root = augment.fold_in(tf.constant([int(seed), 1], tf.int64), process_index)  # epoch orders

    def view_keys(epoch):
        """[V + len(plan)] int64: seed (key_v, position) drives standard view v of the example at
        that position; (key_{V+j}, position) the heavy ops of output view j."""
        ids = list(range(num_views)) + ([HEAVY_SEED_OFFSET + j for j in range(len(plan))] if finish else [])
        return tf.stack([_view_key(seed, process_index, epoch, v) for v in ids])

    def view_uniforms(keys, pos):
        return [augment.view_uniforms(tf.stack([keys[v], pos])) for v in range(num_views)]

    def heavy_seeds(keys, pos):
        """{'heavy_seed': [len(plan), 2]} for plans with heavy views, else {}."""
        if finish is None:
            return {}
        return {"heavy_seed": tf.stack([tf.stack([keys[num_views + j], pos]) for j in range(len(plan))])}

    def output_views(standard, batch):
        return tuple(standard) if finish is None else finish(standard, batch["heavy_seed"])

    epochs = tf.data.Dataset.range(start_epoch, 2 ** 62)
    n = len(arrays[1]) if arrays is not None else int(ds_src.cardinality())
    if epoch_order is not None and n < 0:
        raise ValueError("A sampled epoch_order needs a stream of known length (ds_src.cardinality()).")

    def sampled_order(epoch):
        """The first per_epoch rows epoch_order(epoch) gives, checked."""
        rows = np.asarray(epoch_order(int(epoch)), np.int64)
        if rows.ndim != 1 or len(rows) < per_epoch or rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"epoch_order({int(epoch)}) must give >= {per_epoch} rows in [0, {n}); "
                             f"got shape {rows.shape}, range [{rows.min()}, {rows.max()}].")
        return rows[:per_epoch]

    if arrays is not None:
        images_np, labels_np = arrays
        images, labels = tf.constant(images_np), tf.constant(labels_np)
        rows_index = tf.constant(np.arange(n) if example_index is None else np.asarray(example_index), tf.int64)
        hw = images_np.shape[1:3]

        def epoch_positions(epoch):
            if epoch_order is None:
                order = tf.random.experimental.stateless_shuffle(
                    tf.range(n, dtype=tf.int64), seed=augment.fold_in(order_root, epoch))[:per_epoch]
            else:
                order = tf.ensure_shape(tf.numpy_function(sampled_order, [epoch], tf.int64, stateful=False),
                                        [per_epoch])
            keys = view_keys(epoch)
            return tf.data.Dataset.from_tensor_slices(order).enumerate().map(
                lambda pos, idx: (keys, pos, idx))

        def sample(keys, pos, idx):
            return {"index": idx, "u": tuple(view_uniforms(keys, pos)), **heavy_seeds(keys, pos)}

        appliers = _per_view(lambda cfg: augment.make_view_ops_fn(cfg, mean, std, jit=jit_augment), views)

        def assemble(batch):
            out = []
            for u, cfg, apply, size in zip(batch["u"], views, appliers, sizes):
                params = augment.view_params_from_uniforms(u, cfg, hw)
                crops = augment.crop_and_resize(images, params.pop("crop"), size, box_indices=batch["index"])
                out.append(apply(tf.ensure_shape(crops, [b, size, size, 3]), params))
            return {"views": output_views(out, batch), "label": tf.cast(tf.gather(labels, batch["index"]), tf.int32),
                    "index": tf.cast(tf.gather(rows_index, batch["index"]), tf.int32)}

        ds = epochs.flat_map(epoch_positions).skip(offset)
    else:
        is_jpeg = info["is_jpeg"]
        # Large images: flip, jitter and grayscale per example (branching, cache-resident), then
        # blur, solarize and normalize per batch (the blur is batched matmuls).
        pre_blur = _per_view(lambda cfg: augment.make_example_pre_blur_fn(cfg, jit=jit_augment), views)
        post_blur = _per_view(lambda cfg: augment.make_view_post_fn(cfg, mean, std, jit=jit_augment), views)

        def draws_per_row(epoch):
            return np.bincount(sampled_order(epoch), minlength=n).astype(np.int64)

        def epoch_examples(epoch):
            shuffle_seed = augment.fold_in(order_root, epoch)[0]
            keys = view_keys(epoch)
            src = ds_src
            if epoch_order is not None:
                draws = tf.ensure_shape(tf.numpy_function(draws_per_row, [epoch], tf.int64, stateful=False), [n])
                src = src.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(
                    draws[tf.cast(ex["index"], tf.int64) - stream_offset]))
            return src.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False).take(
                per_epoch).enumerate().map(lambda pos, ex: (keys, pos, ex))

        def sample(keys, pos, ex):
            image = ex["image"]
            shape = tf.image.extract_jpeg_shape(image)[:2] if is_jpeg else tf.shape(image)[:2]
            us = view_uniforms(keys, pos)
            windows = [augment.view_crop_window(u, cfg, shape) for u, cfg in zip(us, views)]
            if is_jpeg:  # decoded once for all views: the same pixels as decoding each window
                image = tf.io.decode_jpeg(image, channels=3, dct_method="INTEGER_ACCURATE")
            crops = []
            for window, u, cfg, pre, size in zip(windows, us, views, pre_blur, sizes):
                y, x, h, w = tf.unstack(window)
                crop = augment.resize_decoded_crop(image[y:y + h, x:x + w], size)
                crop = pre(tf.ensure_shape(crop, [size, size, 3]), augment.view_params_from_uniforms(u, cfg))
                crops.append(tf.ensure_shape(crop, [size, size, 3]))
            return {"crops": tuple(crops), "u": tuple(us), "label": ex["label"], "index": ex["index"],
                    **heavy_seeds(keys, pos)}

        def assemble(batch):
            out = [post(x, augment.view_params_from_uniforms(u, cfg))
                   for x, u, cfg, post in zip(batch["crops"], batch["u"], views, post_blur)]
            return {"views": output_views(out, batch), "label": tf.cast(batch["label"], tf.int32),
                    "index": tf.cast(batch["index"], tf.int32)}

        ds = epochs.flat_map(epoch_examples).skip(offset)

    ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b, drop_remainder=True)
    ds = ds.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _heavy_finisher(plan: Sequence[tuple], mean, std):
    """None for a plan without heavy views (the standard ops normalise); else a batch function
    (standard views in [0, 1], heavy seeds [b, len(plan), 2]) -> the plan's output views:
    each heavy view is its standard view quantised to uint8 (the heavy ops are uint8 image ops,
    as PIL's in the DSSL code), the policy applied, then every view normalised."""
    if not any(spec for _, spec in plan):
        return None
    policies = {spec: heavy.parse_policy(spec) for _, spec in plan if spec}

    def finish(standard, seeds):
        out = []
        for j, (k, spec) in enumerate(plan):
            x = standard[k]
            if spec:
                x8 = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
                x = tf.cast(heavy.apply_policy_batch(policies[spec], x8, seeds[:, j]), tf.float32) / 255.0
            out.append(augment.normalize(x, mean, std))
        return tuple(out)

    return finish


def _eval_window(shape_hw, size: int) -> tf.Tensor:
    """Centre square: 87.5% of the short side for images larger than ``size`` (ImageNet eval:
    resize the short side to size / 0.875, centre crop), the whole short side otherwise."""
    h, w = shape_hw[0], shape_hw[1]
    short = tf.minimum(h, w)
    side = tf.where(short > size, tf.cast(tf.round(0.875 * tf.cast(short, tf.float32)), tf.int32), short)
    return tf.stack([(h - side) // 2, (w - side) // 2, side, side])


def eval_preprocess(image, size: int, is_jpeg: bool, mean, std) -> tf.Tensor:
    """Deterministic eval view float32 [S, S, 3], normalised: centre window resized (bilinear) to S.

    An image already S x S passes through unchanged (then normalised).
    """
    if is_jpeg:
        window = _eval_window(tf.image.extract_jpeg_shape(image), size)
        out = augment.resize_decoded_crop(augment.decode_jpeg_window(image, window), size)
    else:
        window = _eval_window(tf.shape(image), size)
        out = augment.crop_and_resize(image[None], window[None], size)[0]
    return augment.normalize(tf.ensure_shape(out, [size, size, 3]), mean, std)


def num_eval_examples(data_cfg: Mapping[str, Any], split: str) -> int:
    """Examples of ``split`` over all processes (each counted once; padding excluded)."""
    dataset, data_dir = _fields(data_cfg, "dataset", "data_dir")
    return int(sources.dataset_info(dataset, split, data_dir, classes(data_cfg))["num_examples_total"])


def num_eval_batches(data_cfg: Mapping[str, Any], split: str, global_batch_size: int,
                     process_count: Optional[int] = None) -> int:
    """Batches ``eval_iterator`` yields on every process: ceil(largest slice / local batch)."""
    _, pc = _processes(0, process_count)
    b = _local_batch(global_batch_size, pc)
    dataset, data_dir = _fields(data_cfg, "dataset", "data_dir")
    sizes = sources.slice_sizes(dataset, split, data_dir, pc, classes(data_cfg))
    return max(1, math.ceil(max(sizes) / b))


def eval_iterator(data_cfg: Mapping[str, Any], split: str, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
    """One pass over this process's slice of ``split``, no augmentation.

    Yields ``{'image': float32 [b, S, S, 3], 'label': int32 [b], 'index': int32 [b], 'mask': bool
    [b]}`` (``index``: the dataset index); padding (mask False, zero image, label 0, index -1)
    fills the last batch, and every process yields the same
    number of batches (``num_eval_batches``), so shapes and step counts are static.
    """
    pi, pc = _processes(process_index, process_count)
    b = _local_batch(global_batch_size, pc)
    dataset, data_dir, size, mean, std = _fields(data_cfg, "dataset", "data_dir", "image_size", "mean", "std")
    size, mean, std = int(size), tuple(mean), tuple(std)
    ds, n, info = sources.load_split(dataset, split, data_dir, pi, pc, classes(data_cfg))
    total = num_eval_batches(data_cfg, split, global_batch_size, pc) * b
    is_jpeg = info["is_jpeg"]

    def prep(ex):
        return {"image": eval_preprocess(ex["image"], size, is_jpeg, mean, std),
                "label": tf.cast(ex["label"], tf.int32), "index": tf.cast(ex["index"], tf.int32),
                "mask": tf.constant(True)}

    pad = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.float32),
                                        "label": tf.constant(0, tf.int32), "index": tf.constant(-1, tf.int32),
                                        "mask": tf.constant(False)}).repeat(total - n)
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).concatenate(pad)
    ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options())
    return ds.as_numpy_iterator()
