"""Frozen-network features of a whole split, computed on the mesh: the one feature pass behind
evaluation (ssl_jax.evaluate) and the dataset-level refresh passes of the clustering methods
(ssl_jax.train.loop)."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax import parallel


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


def extract_features(encode_fn, params, batch_stats, batches, mesh):
    """(features, labels [N]) over an eval iterator, rows in dataset-index order (the examples'
    stable indices, whatever the number of devices and processes), padding rows dropped;
    features is a float32 [N, D] array, or a dict of them when `encode_fn` returns a dict."""
    feats, labels, index = [], [], []
    for batch in batches:
        images = parallel.shard_batch(batch["image"], mesh)
        out = encode_fn(params, batch_stats, images)
        # Every process gets the whole split's features (kNN memory needs all of them).
        out, lab, idx, mask = multihost_utils.process_allgather(
            (out, *(parallel.shard_batch(batch[k], mesh) for k in ("label", "index", "mask"))), tiled=True)
        mask = np.asarray(mask)
        feats.append(jax.tree.map(lambda x: np.asarray(x, np.float32)[mask], out))
        labels.append(np.asarray(lab)[mask])
        index.append(np.asarray(idx)[mask])
    # A batch gathered over processes holds each process's rows in turn: sort them back.
    order = np.argsort(np.concatenate(index), kind="stable")
    return jax.tree.map(lambda *xs: np.concatenate(xs)[order], *feats), np.concatenate(labels)[order]
