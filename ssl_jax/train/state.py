"""The train state: everything a run needs to continue exactly where it stopped."""
from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """One pytree holding the whole state of a pretraining run.

    step:         number of optimizer updates done so far; also the input position (the
                  pipeline is a pure function of (seed, step), see ssl_jax.data.pipeline).
    params:       everything the optimizer updates: {'encoder', <method heads>, 'probe'}.
    batch_stats:  BatchNorm running statistics of the trained networks.
    opt_state:    optax state.
    method_state: state a method keeps besides its trained params (BYOL: the EMA target).
    rng:          the run's base PRNG key; step k uses fold_in(rng, k), so resuming needs no
                  RNG bookkeeping.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    method_state: Any
    rng: jax.Array
