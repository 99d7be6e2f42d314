"""Projection / prediction heads."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import BN_EPSILON, BN_MOMENTUM

# output_bn values -> (use_scale, use_bias) of the BatchNorm after the last Dense.
OUTPUT_BN = {"none": None, "affine": (True, True), "scale": (True, False), "plain": (False, False)}


class MLPHead(nn.Module):
    """MLP: Dense -> [BN] -> ReLU -> ... -> Dense [-> BN].

    ``num_layers`` Dense layers; BatchNorm (if ``hidden_bn``) + ReLU after each but the
    last. ``output_bn`` puts a BatchNorm (no ReLU) after the last Dense: 'affine' (scale
    and offset), 'scale' (SimCLR's head: no offset), 'plain' (no affine parameters:
    SimSiam's projector, MoCo v3's heads) or 'none'. ``output_bias`` False drops the last
    Dense's bias (Barlow Twins; redundant before a BN). MoCo v2's head has no BN at all
    (``hidden_bn=False``). BN momentum 0.9, epsilon 1e-5 (BYOL's values). Computes in
    ``dtype``, params float32; returns float32.
    """

    hidden_dim: int
    output_dim: int
    num_layers: int = 2
    hidden_bn: bool = True
    output_bn: str = "none"
    output_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {self.num_layers}.")
        if self.output_bn not in OUTPUT_BN:
            raise ValueError(f"MLPHead output_bn={self.output_bn!r}; valid: {sorted(OUTPUT_BN)}.")

        def norm(name, scale=True, bias=True):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                epsilon=BN_EPSILON, use_scale=scale, use_bias=bias,
                                dtype=self.dtype, name=name)

        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense{i + 1}")(x)
            if self.hidden_bn:
                x = norm(f"bn{i + 1}")(x)
            x = nn.relu(x)
        x = nn.Dense(self.output_dim, use_bias=self.output_bias, dtype=self.dtype,
                     name=f"dense{self.num_layers}")(x)
        if OUTPUT_BN[self.output_bn] is not None:
            x = norm(f"bn{self.num_layers}", *OUTPUT_BN[self.output_bn])(x)
        return x.astype(jnp.float32)


def build_head(cfg: Any, dtype: Any = jnp.float32) -> MLPHead:
    """An MLPHead from a config dict with keys hidden_dim, output_dim and optionally
    num_layers, hidden_bn, output_bn, output_bias."""
    keys = ("hidden_dim", "output_dim", "num_layers", "hidden_bn", "output_bn", "output_bias")
    unknown = set(cfg) - set(keys)
    if unknown:
        raise ValueError(f"Unknown head config keys {sorted(unknown)}; valid: {list(keys)}.")
    return MLPHead(dtype=dtype, **{k: cfg[k] for k in keys if k in cfg})
