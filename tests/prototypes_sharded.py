"""Jits sinkhorn and carp on a batch sharded over 8 devices and on one device; prints both as JSON.

Used by tests/test_losses_prototypes.py in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX is imported, hence a separate process).
Usage: python tests/prototypes_sharded.py N K NUM_BLOCKS SEED
"""
import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import losses  # noqa: E402


def inputs(n: int, k: int, seed: int):
    """Scores [N, K] for sinkhorn and the two views' logits [N, K] for carp (float32)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, k)).astype(np.float32) for _ in range(3))


def main(n: int, k: int, num_blocks: int, seed: int) -> None:
    scores, logits_a, logits_b = inputs(n, k, seed)

    @jax.jit
    def fn(scores, logits_a, logits_b):
        # The key is a constant of the program: every device draws the same partition.
        perm = losses.carp_permutation(jax.random.PRNGKey(seed), k)
        loss, parts = losses.carp(logits_a, logits_b, perm, num_blocks, 0.7)
        return losses.sinkhorn(scores), loss, parts["consistency"], parts["kl"], perm

    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    sharded = [jax.device_put(x, batch) for x in (scores, logits_a, logits_b)]
    single = [jax.device_put(x, jax.devices()[0]) for x in (scores, logits_a, logits_b)]
    out8, out1 = fn(*sharded), fn(*single)
    print(json.dumps({
        "num_devices": len(jax.devices()),
        "input_shards": [list(s.data.shape) for s in sharded[0].addressable_shards],
        "codes_shards": [list(s.data.shape) for s in out8[0].addressable_shards],
        **{f"{name}_{d}": np.asarray(v).tolist() for d, out in ((8, out8), (1, out1))
           for name, v in zip(("codes", "carp", "consistency", "kl", "perm"), out)},
    }))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
