"""Runs kmeans on features sharded over 8 devices and on one device; prints both as JSON.

Used by tests/test_clustering.py in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX is imported, hence a separate process).
Usage: python tests/clustering_sharded.py N D K SEED
"""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402
from ssl_jax.evaluate.clustering import kmeans  # noqa: E402


def inputs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Overlapping Gaussian blobs [N, D] float32: Lloyd needs several iterations on them."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.normal(size=(k, d))
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def main(n: int, d: int, k: int, seed: int) -> None:
    x = inputs(n, d, k, seed)
    mesh = parallel.make_mesh()
    x8 = jax.device_put(x, parallel.batch_sharding(mesh))
    out = {"num_devices": len(jax.devices()),
           "input_shards": [list(s.data.shape) for s in x8.addressable_shards]}
    for name, features in (("8", x8), ("1", x)):
        res = kmeans(features, k, num_restarts=2, seed=seed, tol=0.0)
        out[f"assignments_{name}"] = np.asarray(res.assignments).tolist()
        out[f"assignment_shards_{name}"] = [list(s.data.shape)
                                           for s in res.assignments.addressable_shards]
        out[f"centroids_{name}"] = np.asarray(res.centroids).tolist()
        out[f"inertia_{name}"] = res.inertia
        out[f"num_iters_{name}"] = res.num_iters
    print(json.dumps(out))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
