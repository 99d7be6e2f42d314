"""AlexNet with BatchNorm, the backbone of DeepCluster (Caron et al. 2018) and SeLa (Asano et
al. 2020), in flax.linen, NHWC; with DeepCluster's optional fixed Sobel input layer.

Layout of DeepCluster's ``models/alexnet.py`` (the '2012' configuration with ``bn=True``),
without its ``top_layer`` (the method's classifier over the pseudo-labels, not part of the
encoder):

    [sobel]   fixed: grayscale (mean of the channels), then 3x3 Sobel x and y -> 2 channels
    conv1     96  11x11 stride 4 pad 2 -> BN -> ReLU -> maxpool 3/2
    conv2     256 5x5 pad 2            -> BN -> ReLU -> maxpool 3/2
    conv3     384 3x3 pad 1            -> BN -> ReLU
    conv4     384 3x3 pad 1            -> BN -> ReLU
    conv5     256 3x3 pad 1            -> BN -> ReLU -> maxpool 3/2
    flatten   256·6·6 (224 px input)
    fc6       dropout 0.5 -> Dense 4096 -> ReLU
    fc7       dropout 0.5 -> Dense 4096 -> ReLU        (the output h, what the top layer sees)

Deviations, all documented choices:
  * The convs have no bias: each is followed by a BatchNorm, which cancels a bias exactly
    (DeepCluster's convs carry one; it only adds parameters that receive no gradient signal).
  * Adaptive average pooling to a fixed grid before the flatten (as torchvision's AlexNet), so
    the flatten size is static for any input size: 6x6 for the ImageNet layout (the identity at
    224 px, so DeepCluster's network there), 2x2 with ``cifar_stem``.
  * ``cifar_stem`` (small inputs: 16, 32, 64 px ...): conv1 is 3x3 stride 1 pad 1 instead of
    11x11 stride 4, and the three max-pools are 3/2 with padding 1 (32 -> 16 -> 8 -> 4,
    16 -> 8 -> 4 -> 2), then the 2x2 average pool: the flatten is 256·w·4. The ImageNet layout
    needs inputs of at least 63 px (three unpadded pools).
  * ``width`` scales every channel count and the FC width (4096·width), for small demos.

Initialisation as DeepCluster's: conv kernels N(0, 2 / (k·k·out_channels)) (He, fan-out,
untruncated), Dense kernels N(0, 0.01²) with zero biases, BN scale 1 and bias 0. BatchNorm
uses PyTorch's default momentum 0.1 (0.9 in flax's convention) and epsilon 1e-5, as the
ResNets here (models.resnet.norm_layer; per-view statistics with ``bn_views``).

DeepCluster clusters the penultimate features with the last ReLU removed: before each
clustering pass it drops the classifier's final ReLU and computes the features in eval mode
(``main.py``: ``model.classifier = nn.Sequential(*list(model.classifier.children())[:-1])``
then ``compute_features`` under ``model.eval()``). Here that is fc7's pre-ReLU output, the
'fc7_pre_relu' entry of ``return_stages`` (or ``pre_relu=True``) with ``train=False``.

Dropout draws from the encoder's 'drop_path' rng collection (models.vit.DROP_PATH_RNG), the
one rng the methods hand an online encoder in training (methods.common.apply_train), as the
ViT's stochastic depth does: it is active only with ``train=True`` *and* that rng, so the
momentum target, evaluation and feature extraction run without it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.resnet import _channels, model_dtype, norm_layer
from ssl_jax.models.sobel import sobel_filter
from ssl_jax.models.vit import DROP_PATH_RNG

# DeepCluster: conv weights N(0, sqrt(2 / n)), n = k·k·out_channels (not truncated).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated in jax
dense_kernel_init = nn.initializers.normal(stddev=0.01)

# (name, base channels, kernel, stride, padding, max-pool after) of the ImageNet layout.
CONV_LAYERS = (
    ("conv1", 96, 11, 4, 2, True),
    ("conv2", 256, 5, 1, 2, True),
    ("conv3", 384, 3, 1, 1, False),
    ("conv4", 384, 3, 1, 1, False),
    ("conv5", 256, 3, 1, 1, True),
)
FC_WIDTH = 4096
CIFAR_POOL_GRID = 2

def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """Average pooling of x [N, H, W, C] to [N, size, size, C] with PyTorch's adaptive bins
    (bin i of an axis of length L covers floor(i·L/size) .. ceil((i+1)·L/size)); the identity
    when H = W = size, and a replication when an axis is shorter than `size`."""
    def pool_axis(y, axis):
        length = y.shape[axis]
        if length == size:
            return y
        bins = [jnp.mean(jax.lax.slice_in_dim(y, (i * length) // size, -(-((i + 1) * length) // size),
                                              axis=axis), axis=axis, keepdims=True)
                for i in range(size)]
        return jnp.concatenate(bins, axis=axis)
    dtype = x.dtype
    return pool_axis(pool_axis(x.astype(jnp.float32), 1), 2).astype(dtype)


def _dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout: each element zeroed with probability `rate`, the rest scaled by
    1 / (1 - rate)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype)).astype(x.dtype)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, one AlexNet conv layer (params 'conv', 'bn')."""

    features: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        pad = ((self.padding, self.padding),) * 2
        x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding=pad, use_bias=False,
                    dtype=self.dtype, kernel_init=conv_kernel_init, name="conv")(x)
        return nn.relu(norm_layer(train, self.dtype, bn_views)(name="bn")(x))


class FCConvNet(nn.Module):
    """What AlexNet-BN and VGG-16-BN share: their fields, the input checks and the Sobel layer,
    and the classifier fc6 -> [dropout] -> fc7 over the conv output average-pooled to a fixed
    grid. A subclass sets IMAGENET_POOL_GRID, MIN_IMAGENET_SIZE and DROPOUT_BEFORE_FC6
    (AlexNet: dropout before fc6 and before fc7; VGG-16: before fc7 only)."""

    width_multiplier: float = 1.0
    cifar_stem: bool = False
    sobel: bool = False
    dropout: float = 0.5
    dtype: Any = jnp.float32
    remat: bool = False

    @property
    def feature_dim(self) -> int:
        """Size D of the output features (fc7): 4096·width."""
        return _channels(FC_WIDTH, self.width_multiplier)

    @property
    def pool_grid(self) -> int:
        """Side of the grid the last conv output is average-pooled to before the flatten."""
        return CIFAR_POOL_GRID if self.cifar_stem else self.IMAGENET_POOL_GRID

    def _input(self, x):
        """The checked input, through the Sobel layer if asked, in the compute dtype."""
        name = type(self).__name__
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name} dropout must be in [0, 1), got {self.dropout}.")
        if not self.cifar_stem and min(x.shape[1:3]) < self.MIN_IMAGENET_SIZE:
            raise ValueError(f"{name}'s ImageNet layout needs inputs of at least {self.MIN_IMAGENET_SIZE} "
                             f"px, got {x.shape[1]}x{x.shape[2]}; set config.model.cifar_stem=True "
                             "for small images.")
        if self.sobel:
            x = sobel_filter(x)
        return jnp.asarray(x, self.dtype)

    def _classifier(self, x, train: bool, stages: dict, return_stages: bool, pre_relu: bool):
        """fc6 and fc7 over the pooled conv output x; the encoder's return value."""
        x = adaptive_avg_pool(x, self.pool_grid)
        x = x.reshape(x.shape[0], -1)
        active = train and self.dropout > 0.0 and self.has_rng(DROP_PATH_RNG)
        drop = lambda y: _dropout(y, self.dropout, self.make_rng(DROP_PATH_RNG)) if active else y
        dense = lambda name: nn.Dense(self.feature_dim, dtype=self.dtype, kernel_init=dense_kernel_init,
                                      bias_init=nn.initializers.zeros, name=name)
        fc6 = nn.relu(dense("fc6")(drop(x) if self.DROPOUT_BEFORE_FC6 else x))
        fc7_pre_relu = dense("fc7")(drop(fc6)).astype(jnp.float32)
        out = nn.relu(fc7_pre_relu)
        if return_stages:
            return dict(stages, fc6=fc6.astype(jnp.float32), fc7_pre_relu=fc7_pre_relu, pooled=out)
        return fc7_pre_relu if pre_relu else out


def build_fc_convnet(cls, names: tuple, model_cfg: Any):
    """`cls` (AlexNet, VGG16) from a complete model config (dict or ConfigDict; defaults:
    ssl_jax.presets.base_config): ``name`` (one of `names`), ``width``, ``cifar_stem``,
    ``sobel``, ``dropout`` (in [0, 1)), ``dtype``, ``remat``."""
    name = model_cfg["name"]
    if name not in names:
        raise ValueError(f"Unknown {cls.__name__} name {name!r} in model config; valid names: {', '.join(names)}.")
    dropout = float(model_cfg["dropout"])
    if not 0.0 <= dropout < 1.0:  # also rejects NaN
        raise ValueError(f"config.model.dropout must be in [0, 1), got {dropout}.")
    return cls(width_multiplier=float(model_cfg["width"]), cifar_stem=bool(model_cfg["cifar_stem"]),
               sobel=bool(model_cfg["sobel"]), dropout=dropout, dtype=model_dtype(model_cfg),
               remat=bool(model_cfg["remat"]))


class AlexNet(FCConvNet):
    """AlexNet-BN encoder (DeepCluster / SeLa) returning the 4096·width-d post-ReLU fc7 output.

    Attributes:
      width_multiplier: scales every channel count and the FC width (4096·width).
      cifar_stem: the small-input layout (3x3 stride-1 conv1, padded pools, 2x2 grid before
        the flatten; see the module docstring) instead of the ImageNet one (11x11/4 conv1,
        6x6 grid; inputs of at least 63 px).
      sobel: the fixed Sobel input layer (sobel_filter): the convs see 2 channels.
      dropout: dropout rate before fc6 and fc7 (DeepCluster 0.5), active only with
        ``train=True`` and a 'drop_path' rng (module docstring).
      dtype: compute dtype (params float32; the returned features float32).
      remat: recompute each conv layer's (conv, BN, ReLU) activations in the backward pass
        (nn.remat per layer); params, names and results unchanged.

    Parameter names: ``conv1``..``conv5`` each with ``conv`` (kernel) and ``bn`` (scale, bias;
    batch_stats mean, var), ``fc6`` and ``fc7`` (kernel, bias). The Sobel layer has none.
    """

    IMAGENET_POOL_GRID = 6  # 224 px -> 6x6 after conv5's max-pool
    MIN_IMAGENET_SIZE = 63  # smallest input the ImageNet layout's three unpadded pools accept
    DROPOUT_BEFORE_FC6 = True

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False, bn_views: int = 1,
                 pre_relu: bool = False):
        """x: images [N, H, W, C]. Returns the fc7 features after their ReLU [N, D] (float32).

        pre_relu: return fc7 before its ReLU instead (DeepCluster's clustering features).
        return_stages: a dict (the per-layer probes) of 'conv1'..'conv5' (each conv layer's
        post-ReLU output, before its max-pool, globally average-pooled: [N, C_k] with C_k =
        96, 256, 384, 384, 256 times width), 'fc6' (post-ReLU [N, D]), 'fc7_pre_relu' [N, D]
        and 'pooled' (the output [N, D]); all float32.
        bn_views > 1: the batch holds that many views example-major and every BatchNorm
        normalises each view with its own statistics (models.norm.BatchNorm)."""
        x = self._input(x)
        block_cls = nn.remat(ConvBNReLU, static_argnums=(2, 3)) if self.remat else ConvBNReLU
        stages = {}
        for name, channels, kernel, stride, padding, pool in CONV_LAYERS:
            if self.cifar_stem and name == "conv1":
                kernel, stride, padding = 3, 1, 1
            x = block_cls(_channels(channels, self.width_multiplier), kernel, stride, padding,
                          self.dtype, name=name)(x, train, bn_views)
            if return_stages:
                stages[name] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            if pool:
                pad = ((1, 1), (1, 1)) if self.cifar_stem else "VALID"
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad)
        return self._classifier(x, train, stages, return_stages, pre_relu)


ALEXNET_NAMES = ("alexnet",)


def build_alexnet(model_cfg: Any) -> AlexNet:
    """AlexNet-BN from a complete model config (fields: `build_fc_convnet`)."""
    return build_fc_convnet(AlexNet, ALEXNET_NAMES, model_cfg)
