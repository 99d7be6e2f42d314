"""Jits nt_xent on a batch sharded over 8 devices; prints its loss and compiled HLO facts as JSON.

Used by tests/test_losses_contrastive.py in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX is imported, hence a separate process).
Usage: python tests/nt_xent_sharded.py N D SEED
"""
import json
import re
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import losses  # noqa: E402

_COLLECTIVES = ("all-gather(", "all-reduce(", "reduce-scatter(", "all-to-all(", "collective-permute(")


def main(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    z1, z2 = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
    fn = jax.jit(losses.nt_xent)
    hlo = fn.lower(z1, z2).compile().as_text()
    lines = hlo.splitlines()
    print(json.dumps({
        "num_devices": len(jax.devices()),
        "input_shards": [list(s.data.shape) for s in z1.addressable_shards],
        "loss": float(fn(z1, z2)),
        "f32_shapes": sorted(set(re.findall(r"f32\[\d+(?:,\d+)*\]", hlo))),
        # Result shape of every matmul, e.g. "f32[8,64]".
        "dot_shapes": [m.group(1) for line in lines
                       if (m := re.search(r"= (f32\[[\d,]*\])\S* dot\(", line))],
        "collectives": [line.strip().split(", metadata=")[0] for line in lines
                        if any(c in line for c in _COLLECTIVES)],
    }))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
