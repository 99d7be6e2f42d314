"""One of two processes (2 CPU devices each) that reach their first collectives far apart: process
1 sleeps SKEW_S before the mesh is built (the barrier waits it out) and again before each program
over a set of devices never used before (gloo allows such a first collective 30 s, unless
parallel.make_mesh opened it). Prints the sums; exits 0 when every one ran."""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax import parallel  # noqa: E402

SKEW_S = 35  # beyond gloo's 30 s


def main(process_id: int, port: int) -> None:
    parallel.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                    process_id=process_id)
    late = lambda: time.sleep(SKEW_S if process_id == 1 else 0)
    late()
    mesh = parallel.make_mesh(data=2, fsdp=2)  # data pairs a device of each process; fsdp is local
    parallel.barrier("reused name")
    parallel.barrier("reused name")
    one_per_device = parallel.batch_sharding(mesh)
    x = jax.make_array_from_callback((4,), one_per_device, lambda index: np.arange(4, dtype=np.float32)[index])
    late()
    over_data = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, parallel.DATA_AXIS), mesh=mesh,
                                      in_specs=one_per_device.spec, out_specs=one_per_device.spec))(x)
    total = jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh))(x)
    print(f"process {process_id}: data sums {parallel.to_host(over_data).tolist()}, "
          f"total {float(parallel.to_host(total))}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
