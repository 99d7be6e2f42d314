"""The train state: everything a run needs to continue exactly where it stopped."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


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


# An ensemble's state (ssl_jax.methods.ensemble): the 1-block TrainState with a leading block axis
# on these fields; step and rng are shared by the blocks. Here, beside TrainState, so that
# checkpoint readers (ssl_jax.pretrained) select a block without importing the methods.
STACKED_FIELDS = ("params", "batch_stats", "opt_state", "method_state")


@flax.struct.dataclass
class EnsembleState(TrainState):
    """A TrainState whose `stacked_fields` carry a leading block axis (ssl_jax.methods.ensemble)."""

    stacked_fields = STACKED_FIELDS  # a class attribute, not a field: read by ssl_jax.parallel


def stack(tree: Any, m: int) -> Any:
    """m copies of every leaf of `tree` on a new leading axis (fresh buffers)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + jnp.shape(x)).copy(), tree)


def select_block(tree: Any, k: int) -> Any:
    """Block k of a stacked tree: an EnsembleState gives the 1-block TrainState (step and rng
    as they are); a state as a dict (ssl_jax.train.checkpoint.restore_raw) gives the dict with
    the STACKED_FIELDS indexed; any other tree (params, batch_stats) has every leaf indexed."""
    if isinstance(tree, EnsembleState):
        fields = {f: select_block(getattr(tree, f), k) for f in STACKED_FIELDS}
        return TrainState(step=tree.step, rng=tree.rng, **fields)
    if isinstance(tree, dict) and "step" in tree and "params" in tree:
        return dict(tree, **{f: select_block(tree[f], k) for f in STACKED_FIELDS if f in tree})
    return jax.tree.map(lambda x: x[k], tree)
