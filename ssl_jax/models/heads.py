"""Projection / prediction heads, DINO's head and SwAV's prototypes."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.resnet import norm_layer

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
    def __call__(self, x, train: bool, bn_views: int = 1):
        """``bn_views`` > 1: x holds that many views example-major, each BatchNorm normalises
        each view with its own statistics (see models.norm.BatchNorm)."""
        if self.num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {self.num_layers}.")
        if self.output_bn not in OUTPUT_BN:
            raise ValueError(f"MLPHead output_bn={self.output_bn!r}; valid: {sorted(OUTPUT_BN)}.")

        make_norm = norm_layer(train, self.dtype, bn_views)

        def norm(name, scale=True, bias=True):
            return make_norm(use_scale=scale, use_bias=bias, name=name)

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
    """An MLPHead from a complete head config (what ssl_jax.presets.head makes, the one
    source of its defaults): keys hidden_dim, output_dim, num_layers, hidden_bn, output_bn,
    output_bias."""
    keys = ("hidden_dim", "output_dim", "num_layers", "hidden_bn", "output_bn", "output_bias")
    unknown, missing = set(cfg) - set(keys), [k for k in keys if k not in cfg]
    if unknown or missing:
        raise ValueError(f"A head config needs exactly the keys {list(keys)}: unknown "
                         f"{sorted(unknown)}, missing {missing}; build it with "
                         "ssl_jax.presets.head(hidden_dim, output_dim, ...).")
    return MLPHead(dtype=dtype, **{k: cfg[k] for k in keys})


class DINOHead(nn.Module):
    """DINO's head (Caron et al., 2021, Sec. 3.1 and App.): an MLP of ``num_layers`` Dense
    layers (GELU, BN optional) down to a ``bottleneck_dim`` embedding, L2-normalisation, and
    a weight-normalised Dense without bias to ``output_dim`` logits. With
    ``norm_last_layer`` (DINO's default) the weight-norm gain is fixed at 1, so the last
    layer's columns are unit vectors; otherwise the gain is a parameter initialised at 1.
    Dense kernels: truncated normal std 0.02 and zero biases, as the authors' code.
    """

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    output_dim: int = 65536
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        init = nn.initializers.truncated_normal(0.02)
        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=init, name=f"dense{i + 1}")(x)
            if self.use_bn:
                x = norm_layer(train, self.dtype, bn_views)(name=f"bn{i + 1}")(x)
            x = nn.gelu(x, approximate=False)
        x = nn.Dense(self.bottleneck_dim, dtype=self.dtype, kernel_init=init, name=f"dense{self.num_layers}")(x)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
        v = self.param("last_layer", nn.initializers.lecun_normal(), (self.bottleneck_dim, self.output_dim))
        w = v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True) + 1e-12)
        if not self.norm_last_layer:
            w = w * self.param("last_layer_gain", nn.initializers.ones, (self.output_dim,))
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)


class Prototypes(nn.Module):
    """SwAV's prototypes (Caron et al., 2020): scores of the L2-normalised embedding against
    ``num_prototypes`` vectors, a Dense without bias whose kernel columns the method keeps
    at unit norm (``normalize_prototypes`` after every update)."""

    num_prototypes: int

    @property
    def output_dim(self) -> int:
        return self.num_prototypes

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        del train, bn_views  # no BatchNorm
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
        return nn.Dense(self.num_prototypes, use_bias=False, name="kernel_layer")(x)


def normalize_prototypes(params: Any) -> Any:
    """Prototypes params with unit-norm columns (SwAV normalises them after each step)."""
    k = params["kernel_layer"]["kernel"]
    return {"kernel_layer": {"kernel": k * jax.lax.rsqrt(jnp.sum(k * k, axis=0, keepdims=True) + 1e-12)}}
