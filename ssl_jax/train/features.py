"""Frozen-network features of a whole split, computed on the mesh: the one feature pass behind
evaluation (ssl_jax.evaluate) and the dataset-level refresh passes of the clustering methods
(ssl_jax.train.loop)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax import parallel
from ssl_jax.train import preemption


def make_encode_fn(encoder, mesh, stages: bool = False):
    """jit of encoder(images) in inference mode; images sharded over `data`, params replicated.

    With `stages` the output is a dict of intermediate features and 'pooled' (the per-layer
    probes): every ResNet stage's output, globally average-pooled ('stage1'..'stage4'), or a
    ViT's class token at 1/4, 1/2, 3/4 of its depth ('block3', 'block6', 'block9' for 12)."""
    kwargs = {"return_stages": True} if stages else {}

    def encode(params, stats, images):
        return encoder.apply({"params": params, "batch_stats": stats}, images, train=False, **kwargs)

    return make_feature_fn(encode, mesh)


def make_feature_fn(fn, mesh):
    """jit of fn(params, batch_stats, images) -> per-row outputs (a pytree of [b, ...]): images
    and outputs sharded over the batch axes, params and statistics replicated."""
    return jax.jit(fn, in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh),
                                     parallel.batch_sharding(mesh)),
                   out_shardings=parallel.batch_sharding(mesh))


def extract_features(encode_fn, params, batch_stats, batches, mesh, report=None):
    """(features, labels [N]) over an eval iterator, rows in dataset-index order (the examples'
    stable indices, whatever the number of devices and processes), padding rows dropped;
    features is a float32 [N, D] array, or a dict of them when `encode_fn` returns a dict.
    `report(done_batches)`, if given, is called after each batch (logging.pass_reporter); so is
    preemption.poll_pass (every process runs the same number of batches)."""
    feats, labels, index = [], [], []
    for done, batch in enumerate(batches, 1):
        images = parallel.shard_batch(batch["image"], mesh)
        out = encode_fn(params, batch_stats, images)
        # Every process gets the whole split's features (kNN memory needs all of them).
        out, lab, idx, mask = multihost_utils.process_allgather(
            (out, *(parallel.shard_batch(batch[k], mesh) for k in ("label", "index", "mask"))), tiled=True)
        mask = np.asarray(mask)
        feats.append(jax.tree.map(lambda x: np.asarray(x, np.float32)[mask], out))
        labels.append(np.asarray(lab)[mask])
        index.append(np.asarray(idx)[mask])
        if report is not None:
            report(done)
        preemption.poll_pass()  # a SIGTERM during a multi-process pass (evaluation, labelling)
    # A batch gathered over processes holds each process's rows in turn: sort them back.
    order = np.argsort(np.concatenate(index), kind="stable")
    return jax.tree.map(lambda *xs: np.concatenate(xs)[order], *feats), np.concatenate(labels)[order]



@functools.lru_cache(maxsize=8)
def _row_fns(mesh, num_rows: int):
    """(zeros, scatter) jitted for one mesh and row count: compiled once for all of a run's
    passes. Rows are scattered into place on the devices: XLA moves each to the device that
    owns its index, whatever process read it; padding (mask False) is sent past the end, which
    writes nothing."""
    sharding = parallel.batch_sharding(mesh)

    def zeros(out):
        return jax.tree.map(lambda x: jnp.zeros((num_rows,) + x.shape[1:], jnp.float32), out)

    def scatter(rows, out, index, mask):
        index = jnp.where(mask, index, num_rows)
        return jax.tree.map(lambda r, o: r.at[index].set(o.astype(r.dtype), mode="drop"), rows, out)

    return (jax.jit(zeros, out_shardings=sharding),
            jax.jit(scatter, out_shardings=sharding, donate_argnums=0))


def extract_features_on_device(feature_fn, params, batch_stats, batches, mesh, num_rows: int, report=None):
    """The pass of `extract_features` kept on the devices: a pytree of float32 [num_rows, ...]
    global arrays in dataset-index order, the example axis sharded like the batch (each device
    holds num_rows / devices rows; nothing is gathered on a host). Rows no example fills (past
    the split's size) are 0. For passes too large for a host (SeLa's N x heads x K
    log-probabilities at ImageNet scale). `num_rows` (>= the split's size) must split over the
    batch's devices: a multiple of the global batch does. `report` as in `extract_features`."""
    if num_rows % parallel.batch_shards(mesh):
        raise ValueError(f"extract_features_on_device: num_rows={num_rows} does not split over the "
                         f"{parallel.batch_shards(mesh)} devices of the batch axes.")
    zeros, scatter = _row_fns(mesh, int(num_rows))
    rows = None
    for done, batch in enumerate(batches, 1):
        images, index, mask = (parallel.shard_batch(batch[k], mesh) for k in ("image", "index", "mask"))
        out = feature_fn(params, batch_stats, images)
        rows = scatter(zeros(out) if rows is None else rows, out, index, mask)
        if report is not None:
            report(done)
        preemption.poll_pass()
    if rows is None:
        raise ValueError("extract_features_on_device: the split gave no batch.")
    return rows
