"""Small pieces every method uses: applying a BN network to views, EMA, the key queue."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models.vit import DROP_PATH_RNG


def apply_train(module: nn.Module, params: Any, batch_stats: Any, x: jax.Array,
                rng: jax.Array | None = None, bn_views: int = 1) -> tuple[jax.Array, Any]:
    """Apply `module` in training mode (batch statistics); returns (output, new batch_stats).
    `rng` drives stochastic depth where the module has it (ViT drop_path_rate > 0);
    `bn_views` > 1: x holds that many views example-major, BatchNorm statistics per view."""
    rngs = {DROP_PATH_RNG: rng} if rng is not None else None
    out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                bn_views=bn_views, mutable=["batch_stats"], rngs=rngs)
    return out, updates.get("batch_stats", {})


def apply_eval(module: nn.Module, params: Any, batch_stats: Any, x: jax.Array) -> jax.Array:
    """Apply `module` in inference mode (running statistics)."""
    return module.apply({"params": params, "batch_stats": batch_stats}, x, train=False)


def apply_views(module: nn.Module, params: Any, batch_stats: Any, views: jax.Array,
                per_view_bn: bool, rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Apply `module` to `views` [V, N, ...] in training mode, in one call on a batch of V*N.

    per_view_bn: BatchNorm statistics per view, exactly as when each view is forwarded on
    its own (what the BYOL, SimSiam, MoCo v3, Barlow Twins and VICReg reference
    implementations do), and the running statistics updated once with the views' average
    statistics. Otherwise statistics over all views together (SimCLR concatenates its views
    along the batch).

    The batch is laid out example-major ([N, V] -> N*V): the device that holds examples i..j
    holds all their views, so the data-parallel split of N survives the merge (view-major,
    [V, N] -> V*N, would make XLA gather the batch on every device). One call rather than
    one per view: each weight then gets one gradient per step, and under data parallelism
    one all-reduce (one call per view made XLA all-reduce each view's gradient separately,
    twice the gradient traffic; see benchmarks/train_step.py).
    """
    v, n = views.shape[:2]
    merged = jnp.swapaxes(views, 0, 1).reshape((n * v,) + views.shape[2:])
    out, stats = apply_train(module, params, batch_stats, merged, rng, bn_views=v if per_view_bn else 1)
    return jnp.swapaxes(out.reshape((n, v) + out.shape[1:]), 0, 1), stats


def tree_mean(trees) -> Any:
    """Leaf-by-leaf mean of a sequence of pytrees of one structure (BatchNorm statistics of
    several forward passes of one network)."""
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def drop_path_rng(rng: jax.Array, call: int) -> jax.Array:
    """The stochastic-depth key of the online network's `call`-th forward pass of a step, from the
    step's key (which itself goes to the objective)."""
    return jax.random.fold_in(jax.random.fold_in(rng, 1), call)


def ema(target: Any, online: Any, tau: jax.Array) -> Any:
    """Exponential moving average: tau * target + (1 - tau) * online, leaf by leaf."""
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)


def init_queue(rng: jax.Array, size: int, dim: int) -> dict:
    """A queue of `size` L2-normalised random keys [size, dim] and its write position
    (MoCo initialises its queue with normalised Gaussian noise)."""
    keys = losses.l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))
    return {"keys": keys, "ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: dict, new_keys: jax.Array) -> dict:
    """Write the (global) batch of keys [N, D], L2-normalised, over the oldest N entries.

    A ring buffer: the write position advances by N modulo the size, which the method
    checks is a multiple of N, so a batch never wraps around.
    """
    new_keys = jax.lax.stop_gradient(losses.l2_normalize(new_keys)).astype(queue["keys"].dtype)
    size = queue["keys"].shape[0]
    keys = jax.lax.dynamic_update_slice_in_dim(queue["keys"], new_keys, queue["ptr"], axis=0)
    return {"keys": keys, "ptr": (queue["ptr"] + new_keys.shape[0]) % size}
