"""ResNet encoders (v1.5: stride in the 3x3 conv) in flax.linen, NHWC.

Layout matches torchvision's ResNet without the final fc layer, so parameter
counts can be checked against the published ones. BatchNorm uses BYOL's values
(momentum 0.9, epsilon 1e-5). Under ``jax.jit`` with the batch sharded over a
mesh axis the BatchNorm statistics are over the global batch: no ``axis_name``
is needed (or wanted).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.conv import conv_with_onednn, resolve_conv_backend
from ssl_jax.models.norm import BatchNorm
from ssl_jax.models.sobel import sobel_filter

# He / Kaiming normal, fan-out (as torchvision's ResNet init).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

STAGE_SIZES = {
    # ResNet-10: one basic block per stage, the smallest of the family (CPU-scale runs, tests).
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
_PAD1 = ((1, 1), (1, 1))


def _channels(base: int, width_multiplier: float) -> int:
    return max(1, int(round(base * width_multiplier)))


def norm_layer(train: bool, dtype, bn_views: int):
    """make(**kw) -> a function x -> BatchNorm(**kw)(x) with the models' settings (BYOL's
    momentum and epsilon, training or inference mode) and per-view statistics over `bn_views`
    views; ResNet and the MLP heads build their BatchNorms with it."""
    def make(**kw):
        bn = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       dtype=dtype, **kw)
        return lambda x: bn(x, bn_views)
    return make


def conv_layer(dtype, backend: str = "xla"):
    """nn.Conv with the models' settings (no bias, He-normal fan-out init); `backend` 'onednn'
    computes the convolutions with oneDNN where it applies (models.conv), 'xla' with XLA."""
    kw = dict(conv_general_dilated=conv_with_onednn) if backend == "onednn" else {}
    return functools.partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=conv_kernel_init, **kw)


def _block_layers(dtype, train: bool, zero_init_residual: bool, bn_views: int, conv_backend: str):
    """(conv, norm, scale init of the block's last BN) shared by both residual blocks."""
    conv = conv_layer(dtype, conv_backend)
    norm = norm_layer(train, dtype, bn_views)
    last_scale = nn.initializers.zeros if zero_init_residual else nn.initializers.ones
    return conv, norm, last_scale


def _add_residual(x, y, strides: int, conv, norm):
    """relu(y + shortcut(x)); the shortcut is a strided 1x1 conv + BN where the shape changes."""
    if x.shape != y.shape:
        x = conv(y.shape[-1], (1, 1), (strides,) * 2, name="proj_conv")(x)
        x = norm(name="proj_bn")(x)
    return nn.relu(y + x)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``filters`` is the block's output width."""

    filters: int
    strides: int = 1
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        conv, norm, last_scale = _block_layers(self.dtype, train, self.zero_init_residual, bn_views,
                                               self.conv_backend)
        y = conv(self.filters, (3, 3), (self.strides,) * 2, padding=_PAD1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), padding=_PAD1, name="conv2")(y)
        y = norm(scale_init=last_scale, name="bn2")(y)
        return _add_residual(x, y, self.strides, conv, norm)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (ResNet-50+). Output width ``4 * filters``."""

    filters: int
    strides: int = 1
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        conv, norm, last_scale = _block_layers(self.dtype, train, self.zero_init_residual, bn_views,
                                               self.conv_backend)
        y = conv(self.filters, (1, 1), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), (self.strides,) * 2, padding=_PAD1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(4 * self.filters, (1, 1), name="conv3")(y)
        y = norm(scale_init=last_scale, name="bn3")(y)
        return _add_residual(x, y, self.strides, conv, norm)


def _global_pool(x):
    # Reduce in float32 so pooled features (used by heads and probes) are float32
    # whatever the compute dtype.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ResNet(nn.Module):
    """ResNet encoder returning globally average-pooled features.

    Attributes:
      depth: one of 10, 18, 34, 50, 101, 152, 200.
      width_multiplier: scales every channel count, stem included (base 64).
      cifar_stem: 3x3 stride-1 conv and no max-pool (for 32 px inputs) instead of
        the ImageNet 7x7/2 conv + 3x3/2 max-pool.
      zero_init_residual: initialise the scale of the last BatchNorm of every
        residual block to zero, so each block starts as the identity. Default
        True, as in BYOL's reference ResNet and the flax ImageNet example, and
        recommended for large-batch training (Goyal et al., 2017); torchvision's
        default is False.
      dtype: compute dtype (params are always float32).
      remat: recompute each residual block's activations in the backward pass instead of
        storing them (nn.remat per block): less activation memory for ~1/3 more compute.
        The parameters, their names and the results are unchanged.
      conv_backend: 'xla' or 'onednn': which library computes the convolutions and their
        gradients (models.conv; 'onednn' only on one CPU device). Same parameters and results
        up to float32 summation order.
      sobel: DeepCluster's fixed grayscale + Sobel input layer (models.sobel.sobel_filter)
        before the stem, which then takes 2 input channels; no parameters of its own. False
        (the default) leaves the network exactly as without the option.
      frozen_stages: 0 (the default: none), or k in 1..4: the stem and stages 1..k run in
        inference mode even when training (BatchNorm reads and never updates its running
        statistics) and their output is under stop_gradient, so they get zero gradients
        (FUSSL's phase 2 freezes stem..stage 3; the optimizer must also skip them, or weight
        decay would still move them: ssl_jax.methods.fussl_phase2 checks that it does).

    Input is NHWC. Parameter names: ``stem_conv``, ``stem_bn``,
    ``stage{s}_block{b}`` with ``conv{i}``/``bn{i}`` and ``proj_conv``/``proj_bn``.
    """

    depth: int = 50
    width_multiplier: float = 1.0
    cifar_stem: bool = False
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    remat: bool = False
    conv_backend: str = "xla"
    sobel: bool = False
    frozen_stages: int = 0

    @property
    def bottleneck(self) -> bool:
        return self.depth >= 50

    @property
    def feature_dim(self) -> int:
        """Size D of the pooled features: 512·w (18/34) or 2048·w (50+)."""
        expansion = 4 if self.bottleneck else 1
        return expansion * _channels(512, self.width_multiplier)

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False, bn_views: int = 1):
        """Returns pooled features [B, D], or with ``return_stages`` a dict with
        'stage1'..'stage4' (each stage's output, globally average-pooled) and
        'pooled' (the final features). ``bn_views`` > 1: the batch holds that many views
        example-major (row n·bn_views + v is view v of example n) and every BatchNorm
        normalises each view with its own statistics (see models.norm.BatchNorm)."""
        if self.depth not in STAGE_SIZES:
            raise ValueError(f"ResNet depth {self.depth} is not supported; "
                             f"valid depths: {sorted(STAGE_SIZES)}.")
        if self.sobel:
            x = sobel_filter(x)
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(f"ResNet frozen_stages={self.frozen_stages}; choose 0 (none) to 4.")
        x = jnp.asarray(x, self.dtype)
        stem = _channels(64, self.width_multiplier)
        norm = norm_layer(train and self.frozen_stages == 0, self.dtype, bn_views)
        conv = conv_layer(self.dtype, self.conv_backend)
        if self.cifar_stem:
            x = conv(stem, (3, 3), padding=_PAD1, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            x = conv(stem, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)

        block_cls = Bottleneck if self.bottleneck else BasicBlock
        if self.remat:  # arguments 2 and 3 (`train`, `bn_views`, after self and x) are static
            block_cls = nn.remat(block_cls, static_argnums=(2, 3))
        stages = {}
        for i, num_blocks in enumerate(STAGE_SIZES[self.depth]):
            filters = _channels(64 * 2 ** i, self.width_multiplier)
            stage_train = train and i + 1 > self.frozen_stages
            for j in range(num_blocks):
                strides = 2 if (i > 0 and j == 0) else 1
                x = block_cls(filters, strides, self.zero_init_residual, self.dtype, self.conv_backend,
                              name=f"stage{i + 1}_block{j + 1}")(x, stage_train, bn_views)
            if i + 1 == self.frozen_stages:
                x = jax.lax.stop_gradient(x)
            if return_stages:
                stages[f"stage{i + 1}"] = _global_pool(x)
        pooled = _global_pool(x)
        if return_stages:
            stages["pooled"] = pooled
            return stages
        return pooled


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RESNET_NAMES = tuple(f"resnet{d}" for d in STAGE_SIZES)


def model_dtype(model_cfg: Any):
    """The compute dtype named by ``model_cfg["dtype"]`` ('float32' | 'bfloat16')."""
    dtype_name = model_cfg["dtype"]
    if dtype_name not in _DTYPES:
        raise ValueError(f"Unknown model dtype {dtype_name!r}; valid: {', '.join(_DTYPES)}.")
    return _DTYPES[dtype_name]


def build_resnet(model_cfg: Any) -> ResNet:
    """Builds a ResNet encoder from a complete model config (dict or ml_collections.ConfigDict;
    defaults: ssl_jax.presets.base_config).

    Fields: ``name`` ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
    'resnet200'), ``width`` (float), ``cifar_stem`` (bool), ``sobel`` (bool), ``dtype``
    ('float32' | 'bfloat16'), ``zero_init_residual`` (bool), ``remat`` (bool),
    ``conv_backend`` ('auto' | 'xla' | 'onednn'; 'auto' is oneDNN on a single CPU device where
    its kernels build, see models.conv.resolve_conv_backend).
    """
    name = model_cfg["name"]
    if name not in RESNET_NAMES:
        raise ValueError(f"Unknown ResNet name {name!r} in model config; "
                         f"valid names: {', '.join(RESNET_NAMES)}.")
    return ResNet(
        depth=int(name[len("resnet"):]),
        width_multiplier=float(model_cfg["width"]),
        cifar_stem=bool(model_cfg["cifar_stem"]),
        zero_init_residual=bool(model_cfg["zero_init_residual"]),
        dtype=model_dtype(model_cfg),
        remat=bool(model_cfg["remat"]),
        conv_backend=resolve_conv_backend(model_cfg["conv_backend"]),
        sobel=bool(model_cfg["sobel"]),
    )
