"""Projection / prediction heads."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import BN_EPSILON, BN_MOMENTUM


class MLPHead(nn.Module):
    """MLP: Dense -> BN -> ReLU -> ... -> Dense.

    ``num_layers`` Dense layers (with bias); BatchNorm + ReLU after each but the
    last. ``bn_on_output`` adds a BatchNorm (no ReLU) after the last Dense, as
    SimSiam's projector needs. BN momentum 0.9, epsilon 1e-5 (BYOL's values).
    Computes in ``dtype``, params float32; returns float32.
    """

    hidden_dim: int
    output_dim: int
    num_layers: int = 2
    bn_on_output: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {self.num_layers}.")

        def norm(name):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                epsilon=BN_EPSILON, dtype=self.dtype, name=name)

        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense{i + 1}")(x)
            x = nn.relu(norm(f"bn{i + 1}")(x))
        x = nn.Dense(self.output_dim, dtype=self.dtype, name=f"dense{self.num_layers}")(x)
        if self.bn_on_output:
            x = norm(f"bn{self.num_layers}")(x)
        return x.astype(jnp.float32)
