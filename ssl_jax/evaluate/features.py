"""Frozen-encoder features of a whole split, computed on the mesh."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax import parallel
from ssl_jax.methods.common import apply_eval


def make_encode_fn(encoder, mesh):
    """jit of encoder(images) in inference mode; images sharded over `data`, params replicated."""
    return jax.jit(lambda params, stats, images: apply_eval(encoder, params, stats, images),
                   in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh),
                                 parallel.batch_sharding(mesh)),
                   out_shardings=parallel.batch_sharding(mesh))


def extract_features(encode_fn, params, batch_stats, batches, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N]) over an eval iterator (padding rows dropped)."""
    feats, labels = [], []
    for batch in batches:
        images = parallel.shard_batch(batch["image"], mesh)
        out = encode_fn(params, batch_stats, images)
        # Every process gets the whole split's features (kNN memory needs all of them).
        out = multihost_utils.process_allgather(out, tiled=True)
        lab = multihost_utils.process_allgather(parallel.shard_batch(batch["label"], mesh), tiled=True)
        mask = multihost_utils.process_allgather(parallel.shard_batch(batch["mask"], mesh), tiled=True)
        feats.append(np.asarray(out, np.float32)[np.asarray(mask)])
        labels.append(np.asarray(lab)[np.asarray(mask)])
    return np.concatenate(feats), np.concatenate(labels)
