"""Weighted kNN with the memory sharded over 8 simulated devices (padded to a multiple of 8).

Used by tests/test_evaluate.py in a subprocess (XLA_FLAGS must be set before JAX is imported).
Prints JSON: the predictions and scores of the sharded and of the single-array memory, and the
shard shapes of the memory. Usage: python tests/knn_sharded.py N_TRAIN N_TEST D C SEED
"""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.evaluate import knn  # noqa: E402


def main(n_train, n_test, d, c, seed):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, d)).astype(np.float32)
    labels = rng.integers(0, c, n_train)
    test = rng.normal(size=(n_test, d)).astype(np.float32)
    mesh = parallel.make_mesh()
    memory, mem_labels, valid = knn.shard_memory(train, labels, mesh)
    sharded = knn.weighted_knn_predict(memory, mem_labels, test, num_classes=c, k=7, temperature=0.1,
                                       chunk_size=16, train_valid=valid)
    plain = knn.weighted_knn_predict(train, labels, test, num_classes=c, k=7, temperature=0.1, chunk_size=16)
    print(json.dumps({
        "num_devices": len(jax.devices()),
        "shard_shapes": sorted({tuple(s.data.shape) for s in memory.addressable_shards}),
        "preds": [np.asarray(p).tolist() for p in (sharded[0], plain[0])],
        "max_score_diff": float(np.max(np.abs(np.asarray(sharded[1]) - np.asarray(plain[1])))),
    }))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
