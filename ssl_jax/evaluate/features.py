"""Frozen-encoder features of a whole split, computed on the mesh."""
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

    return jax.jit(encode, in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh),
                                         parallel.batch_sharding(mesh)),
                   out_shardings=parallel.batch_sharding(mesh))


def extract_features(encode_fn, params, batch_stats, batches, mesh):
    """(features, labels [N]) over an eval iterator (padding rows dropped); features is a
    float32 [N, D] array, or a dict of them when `encode_fn` returns a dict."""
    feats, labels = [], []
    for batch in batches:
        images = parallel.shard_batch(batch["image"], mesh)
        out = encode_fn(params, batch_stats, images)
        # Every process gets the whole split's features (kNN memory needs all of them).
        out = multihost_utils.process_allgather(out, tiled=True)
        lab = multihost_utils.process_allgather(parallel.shard_batch(batch["label"], mesh), tiled=True)
        mask = np.asarray(multihost_utils.process_allgather(
            parallel.shard_batch(batch["mask"], mesh), tiled=True))
        feats.append(jax.tree.map(lambda x: np.asarray(x, np.float32)[mask], out))
        labels.append(np.asarray(lab)[mask])
    return jax.tree.map(lambda *xs: np.concatenate(xs), *feats), np.concatenate(labels)
