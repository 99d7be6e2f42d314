"""Network-in-Network (Lin et al. 2014) as RotNet lays it out (Gidaris et al. 2018, the
CIFAR-10 'NIN4blocks' model; the backbone of SSL++'s CIFAR-10 / STL-10 experiments), in
flax.linen, NHWC.

Four blocks of three Conv (no bias) -> BatchNorm -> ReLU layers, channels for width 1:

    block1   5x5 192 -> 1x1 160 -> 1x1 96    -> max-pool 3/2 pad 1     (32 px -> 96 x 16 x 16)
    block2   5x5 192 -> 1x1 192 -> 1x1 192   -> avg-pool 3/2 pad 1     (     -> 192 x 8 x 8)
    block3   3x3 192 -> 1x1 192 -> 1x1 192                             (     -> 192 x 8 x 8)
    block4   3x3 192 -> 1x1 192 -> 1x1 192                             (     -> 192 x 8 x 8)
    pooled   global average pool of block4 -> 192-d (RotNet's classifier is a Linear on it)

Convs are 'same' padded ((k - 1) / 2) with stride 1; the pools use PyTorch's padding semantics
(RotNet's nn.MaxPool2d / nn.AvgPool2d with padding 1: the max ignores the padding, the average
counts the zero padding in its divisor, count_include_pad=True). RotNet's 4-block model sets
use_avg_on_conv3=False, so blocks 2..4 all run at 8x8 for 32-px inputs and 4x4 for 16-px ones:
the maps B2..B4 SSL++ evaluates are 192x8x8. Each block's map is its output after its pool
(RotNet's feature keys 'conv1'..'conv4' are the outputs of whole blocks, pool included).

Initialisation as RotNet's `weight_initialization`: conv kernels N(0, 2 / (k·k·out_channels))
(He, fan-out, untruncated), BN scale 1 and bias 0. BatchNorm with PyTorch's defaults, momentum
0.1 (0.9 in flax's convention) and epsilon 1e-5 (models.resnet.norm_layer; per-view statistics
with ``bn_views``).

``width`` multiplies every channel count (192, 160, 96), as for the other backbones: one
meaning of config.model.width everywhere; width 0.25 gives 48-channel blocks. Optional
DeepCluster's fixed Sobel input layer (config.model.sobel), as every CNN here.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.conv import resolve_conv_backend
from ssl_jax.models.resnet import _channels, conv_layer, model_dtype, norm_layer
from ssl_jax.models.sobel import sobel_filter

# (kernel, base channels) of the three conv layers of each block, and the pool after it.
BLOCKS = (
    (((5, 192), (1, 160), (1, 96)), "max"),
    (((5, 192), (1, 192), (1, 192)), "avg"),
    (((3, 192), (1, 192), (1, 192)), None),
    (((3, 192), (1, 192), (1, 192)), None),
)
BLOCK_NAMES = tuple(f"block{k}" for k in range(1, len(BLOCKS) + 1))
NIN_NAMES = ("nin",)


def nin_pool(x, kind: str | None):
    """RotNet's 3x3 stride-2 pool with padding 1 ('max', 'avg' counting the zero padding as
    PyTorch's count_include_pad=True, or None for none)."""
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
    return x


class ConvBNReLU(nn.Module):
    """Conv (no bias, He fan-out init, 'same' padding) -> BatchNorm -> ReLU: params 'conv', 'bn'."""

    features: int
    kernel: int
    dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        pad = (self.kernel - 1) // 2
        x = conv_layer(self.dtype, self.conv_backend)(self.features, (self.kernel,) * 2,
                                                      padding=((pad, pad), (pad, pad)), name="conv")(x)
        return nn.relu(norm_layer(train, self.dtype, bn_views)(name="bn")(x))


class NINBlock(nn.Module):
    """Three Conv -> BN -> ReLU layers ``conv1``..``conv3`` (ConvBNReLU), then the block's pool.
    ``layers``: ((kernel, channels), ...). Also the NIN-block probe of RotNet / SSL++
    evaluation: a fresh block on a frozen map (ssl_jax.evaluate.nin_probe)."""

    layers: tuple
    pool: str | None = None
    dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        for i, (kernel, features) in enumerate(self.layers, start=1):
            x = ConvBNReLU(features, kernel, self.dtype, self.conv_backend, name=f"conv{i}")(x, train, bn_views)
        return nin_pool(x, self.pool)


def block_layers(k: int, width_multiplier: float) -> tuple:
    """((kernel, channels), ...) of block k (1-based) at `width_multiplier`."""
    return tuple((kernel, _channels(c, width_multiplier)) for kernel, c in BLOCKS[k - 1][0])


def _global_pool(x):
    # float32 whatever the compute dtype: the heads and probes read these.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class NIN(nn.Module):
    """RotNet's 4-block Network-in-Network encoder returning the globally average-pooled block4
    map [N, 192·width] (float32).

    Attributes:
      width_multiplier: scales every channel count (192, 160, 96).
      sobel: the fixed grayscale + Sobel input layer (models.sobel): block1 sees 2 channels.
      dtype: compute dtype (params float32; returned features float32).
      remat: recompute each block's activations in the backward pass (nn.remat per block);
        params, names and results unchanged.
      conv_backend: 'xla' or 'onednn' (models.conv), as the ResNets.

    Parameter names: ``block1``..``block4``, each with ``conv1``..``conv3`` holding ``conv``
    (kernel) and ``bn`` (scale, bias; batch_stats mean, var).
    """

    width_multiplier: float = 1.0
    sobel: bool = False
    dtype: Any = jnp.float32
    remat: bool = False
    conv_backend: str = "xla"

    @property
    def feature_dim(self) -> int:
        """Size D of the pooled features: 192·width."""
        return _channels(192, self.width_multiplier)

    def block_channels(self, k: int) -> int:
        """Channels of block k's (1-based) output map."""
        return block_layers(k, self.width_multiplier)[-1][1]

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False, bn_views: int = 1,
                 return_maps: bool = False, up_to: int = len(BLOCKS)):
        """x: images [N, H, W, C]. Returns the pooled block4 features [N, D] (float32).

        return_stages: a dict (the per-layer probes) of 'block1'..'block4' (each block's map,
        pool included, globally average-pooled: [N, C_k], C_k = 96, 192, 192, 192 times width)
        and 'pooled' (the output); all float32.
        return_maps: a dict of the blocks' maps themselves, 'block1'..'block<up_to>'
        ([N, H/2, W/2, 96w], then [N, H/4, W/4, 192w]), in the compute dtype, for the NIN-block
        probe; `up_to` stops after that block (the probe of B2 needs no B3, B4).
        bn_views > 1: the batch holds that many views example-major and every BatchNorm
        normalises each view with its own statistics (models.norm.BatchNorm)."""
        if self.sobel:
            x = sobel_filter(x)
        x = jnp.asarray(x, self.dtype)
        block_cls = nn.remat(NINBlock, static_argnums=(2, 3)) if self.remat else NINBlock
        stages, maps = {}, {}
        last = up_to if return_maps else len(BLOCKS)
        if not 1 <= last <= len(BLOCKS):
            raise ValueError(f"NIN up_to={up_to}: there are blocks 1..{len(BLOCKS)}.")
        for k in range(1, last + 1):
            x = block_cls(block_layers(k, self.width_multiplier), BLOCKS[k - 1][1], self.dtype,
                          self.conv_backend, name=f"block{k}")(x, train, bn_views)
            maps[f"block{k}"] = x
            stages[f"block{k}"] = _global_pool(x)
        if return_maps:
            return maps
        if return_stages:
            return dict(stages, pooled=stages["block4"])
        return stages["block4"]


def build_nin(model_cfg: Any) -> NIN:
    """NIN from a complete model config (dict or ConfigDict; defaults ssl_jax.presets.base_config):
    ``name`` ('nin'), ``width``, ``sobel``, ``dtype``, ``remat``, ``conv_backend``."""
    name = model_cfg["name"]
    if name not in NIN_NAMES:
        raise ValueError(f"Unknown NIN name {name!r} in model config; valid names: {', '.join(NIN_NAMES)}.")
    return NIN(width_multiplier=float(model_cfg["width"]), sobel=bool(model_cfg["sobel"]),
               dtype=model_dtype(model_cfg), remat=bool(model_cfg["remat"]),
               conv_backend=resolve_conv_backend(model_cfg["conv_backend"]))
