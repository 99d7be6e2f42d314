"""Small pieces every method uses: applying a BN network, EMA of parameters, views."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def apply_train(module: nn.Module, params: Any, batch_stats: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """Apply `module` in training mode (batch statistics); returns (output, new batch_stats)."""
    out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
    return out, updates["batch_stats"]


def apply_eval(module: nn.Module, params: Any, batch_stats: Any, x: jax.Array) -> jax.Array:
    """Apply `module` in inference mode (running statistics)."""
    return module.apply({"params": params, "batch_stats": batch_stats}, x, train=False)


def apply_train_per_view(module: nn.Module, params: Any, batch_stats: Any, views: jax.Array) -> tuple[jax.Array, Any]:
    """Apply `module` to each view of `views` [V, N, ...] in training mode, in one call.

    BatchNorm statistics are per view (as when each view is forwarded on its own, which is
    what the BYOL and SimSiam reference implementations do), but vmap lets XLA run the V
    views as one batch of V*N. The running statistics are updated with the mean of the
    per-view updates, i.e. once per step with the views' average batch statistics.
    """
    out, stats = jax.vmap(lambda v: apply_train(module, params, batch_stats, v))(views)
    return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def ema(target: Any, online: Any, tau: jax.Array) -> Any:
    """Exponential moving average: tau * target + (1 - tau) * online, leaf by leaf."""
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)


def stack_views(views: tuple[jax.Array, ...]) -> jax.Array:
    """(view_0, ..., view_{V-1}) each [N, H, W, C] -> [V, N, H, W, C]."""
    return jnp.stack(views, axis=0)
