"""VGG-16 with BatchNorm, the backbone of DeeperCluster (Caron et al. 2019), in flax.linen, NHWC;
with DeepCluster's optional fixed Sobel input layer (models.sobel).

Layout of DeeperCluster's ``src/model/vgg16.py`` (configuration D of Simonyan & Zisserman
2015, ``batch_norm=True``), without its prediction layers (the method's classifiers over the
pseudo-labels, not part of the encoder):

    [sobel]   fixed: grayscale (mean of the channels), then 3x3 Sobel x and y -> 2 channels
    conv1     conv1_1, conv1_2: 64             3x3 pad 1 -> BN -> ReLU each; maxpool 2/2
    conv2     conv2_1, conv2_2: 128            "                          ; maxpool 2/2
    conv3     conv3_1 .. conv3_3: 256          "                          ; maxpool 2/2
    conv4     conv4_1 .. conv4_3: 512          "                          ; maxpool 2/2
    conv5     conv5_1 .. conv5_3: 512          "                          ; maxpool 2/2
    flatten   512·7·7 (224 px input)
    fc6       Dense 4096 -> ReLU
    fc7       dropout 0.5 -> Dense 4096 -> ReLU    (the output h)

DeeperCluster's classifier is Linear(512·7·7, 4096) -> ReLU -> Dropout -> Linear(4096, 4096)
[-> ReLU]: one dropout, between fc6 and fc7 (AlexNet's has one before each of fc6 and fc7).
Its training builds the body with ``relu=False`` (``model_factory``), so both its
classifiers and its clustering see fc7 *before* the ReLU: here that is ``pre_relu=True``, or
the 'fc7_pre_relu' entry of ``return_stages`` (as models.alexnet for DeepCluster); the
default output is fc7 after its ReLU, as AlexNet's and DeeperCluster's ``relu=True``
(its transfer evaluations).

Deviations, all documented choices:
  * The convs have no bias: each is followed by a BatchNorm, which cancels a bias exactly.
  * Adaptive average pooling to a fixed grid before the flatten (as torchvision's VGG), so the
    flatten size is static for any input size: 7x7 for the ImageNet layout (the identity at
    224 px, so DeeperCluster's network there), 2x2 with ``cifar_stem``.
  * No input padding. DeeperCluster's ``Net`` wrapper zero-pads the image by 1 px (by 2 px in
    front of its unpadded Sobel convs, which is the same as the padded Sobel layer here after
    a 1 px pad) before the body: 226 px in, still 7x7 after the five max-pools.
  * ``cifar_stem`` (small inputs: 16, 32, 64 px ...): only the first three max-pools are kept
    (the ones after conv1..conv3; 'SAME' padded, i.e. PyTorch's ceil_mode, so odd sizes
    work), conv4 and conv5 run at 1/8 of the input size (4x4 at 32 px, 2x2 at 16 px), then the
    2x2 average pool: the flatten is 512·w·4, with no replicated cells at 16 px. The ImageNet
    layout (five unpadded 2/2 max-pools, as DeeperCluster) needs inputs of at least 32 px.
  * ``width`` scales every channel count and the FC width (4096·width), for small demos.
  * Dense layers initialised as DeepCluster's AlexNet, N(0, 0.01²) with zero biases.
    DeeperCluster's vgg16.py initialises only its convs and leaves the Linear layers at
    PyTorch's default (uniform ±1/sqrt(fan_in), weights and biases).

Initialisation otherwise as DeeperCluster's: conv kernels N(0, 2 / (3·3·out_channels)) (He,
fan-out, untruncated), BN scale 1 and bias 0. BatchNorm with PyTorch's default momentum 0.1
(0.9 in flax's convention) and epsilon 1e-5, as the other backbones (models.resnet.norm_layer;
per-view statistics with ``bn_views``). Dropout draws from the 'drop_path' rng collection and
is active only with ``train=True`` and that rng, as AlexNet's (models.alexnet).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.alexnet import ConvBNReLU, FCConvNet, build_fc_convnet
from ssl_jax.models.resnet import _channels

# Configuration D: the base output channels of each conv of each block (a max-pool follows
# every block in the ImageNet layout).
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CIFAR_MAX_POOLS = 3  # cifar_stem keeps the max-pools after conv1..conv3 only


class VGGBlock(nn.Module):
    """The 3x3 Conv (no bias) -> BN -> ReLU layers of one VGG block, named
    ``conv{block}_{i}`` (each with params 'conv', 'bn'); returns the last one's output, before
    the block's max-pool."""

    channels: tuple
    block: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        for i, features in enumerate(self.channels, start=1):
            x = ConvBNReLU(features, 3, 1, 1, self.dtype, name=f"conv{self.block}_{i}")(x, train, bn_views)
        return x


class VGG16(FCConvNet):
    """VGG-16-BN encoder (DeeperCluster) returning the 4096·width-d post-ReLU fc7 output.

    Attributes:
      width_multiplier: scales every channel count and the FC width (4096·width).
      cifar_stem: the small-input layout (max-pools after conv1..conv3 only, 2x2 grid before
        the flatten; see the module docstring) instead of the ImageNet one (five max-pools,
        7x7 grid; inputs of at least 32 px).
      sobel: the fixed Sobel input layer (models.sobel.sobel_filter): conv1_1 sees 2 channels.
      dropout: dropout rate between fc6 and fc7 (DeeperCluster 0.5), active only with
        ``train=True`` and a 'drop_path' rng.
      dtype: compute dtype (params float32; the returned features float32).
      remat: recompute each block's (2 or 3 conv, BN, ReLU layers) activations in the backward
        pass (nn.remat per block); params, names and results unchanged.

    Parameter names: ``conv1``..``conv5`` (the blocks), each with ``conv{k}_{i}`` holding
    ``conv`` (kernel) and ``bn`` (scale, bias; batch_stats mean, var); ``fc6`` and ``fc7``
    (kernel, bias). The Sobel layer has none.
    """

    IMAGENET_POOL_GRID = 7  # 224 px -> 7x7 after the fifth max-pool
    MIN_IMAGENET_SIZE = 32  # smallest input the ImageNet layout's five unpadded 2/2 pools accept
    DROPOUT_BEFORE_FC6 = False

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False, bn_views: int = 1,
                 pre_relu: bool = False):
        """x: images [N, H, W, C]. Returns the fc7 features after their ReLU [N, D] (float32).

        pre_relu: return fc7 before its ReLU instead (DeeperCluster's training output).
        return_stages: a dict (the per-layer probes) of 'conv1'..'conv5' (each block's output:
        its last conv layer, conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, after BN and ReLU and
        before the max-pool, globally average-pooled: [N, C_k] with C_k = 64, 128, 256, 512,
        512 times width), 'fc6' (post-ReLU [N, D]), 'fc7_pre_relu' [N, D] and 'pooled' (the
        output [N, D]); all float32. (Block names, not 'conv5_3': the probes order layers by
        the number their name's digits spell, and fc6's 6 must come after the convs.)
        bn_views > 1: the batch holds that many views example-major and every BatchNorm
        normalises each view with its own statistics (models.norm.BatchNorm)."""
        x = self._input(x)
        block_cls = nn.remat(VGGBlock, static_argnums=(2, 3)) if self.remat else VGGBlock
        stages = {}
        for k, base in enumerate(BLOCKS, start=1):
            channels = tuple(_channels(c, self.width_multiplier) for c in base)
            x = block_cls(channels, k, self.dtype, name=f"conv{k}")(x, train, bn_views)
            if return_stages:
                stages[f"conv{k}"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            if not self.cifar_stem:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            elif k <= CIFAR_MAX_POOLS:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return self._classifier(x, train, stages, return_stages, pre_relu)


VGG_NAMES = ("vgg16",)


def build_vgg(model_cfg: Any) -> VGG16:
    """VGG-16-BN from a complete model config (fields: `alexnet.build_fc_convnet`)."""
    return build_fc_convnet(VGG16, VGG_NAMES, model_cfg)
