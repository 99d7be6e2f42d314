"""Dense-prediction heads of the proxy tasks on the backbone's last feature map, and how that map
is read from any CNN backbone.

`encode_with_map` runs an encoder (ResNet, NIN) once in training mode and returns its pooled
features together with its last spatial map: the output of its last direct submodule whose
output is 4-D (a ResNet's last residual block, NIN's block4), captured with flax's
capture_intermediates, so the backbones need no extra output and the gradient flows through
the one forward pass.

Heads (all NHWC, params float32, outputs float32):
  ColorizationHead  per-pixel logits over the Q ab bins at the map's resolution: a 3x3 conv
                    (BN, ReLU) then a 1x1 conv to Q (Zhang et al.'s network ends in a 1x1 conv
                    to 313 after its conv8 block; one 3x3 layer stands for that block here).
  ContextDecoder    Pathak et al.'s decoder as a head: a 1x1 conv (their channel-wise fully
                    connected layer keeps the map's layout; ours mixes channels only), then 4x4
                    stride-2 transposed convs with BN + ReLU, each halving the channels, until the
                    region's side, and a 3x3 conv to the image's channels (linear: the targets are
                    normalised pixels, not Pathak's tanh range).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.resnet import norm_layer
from ssl_jax.models.vit import DROP_PATH_RNG  # the rng every backbone's dropout draws from


def _direct_child(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and len(module.path) == 1


def last_map(intermediates: dict) -> jax.Array:
    """The last 4-D output among the captured direct submodules (in call order)."""
    maps = [v["__call__"][0] for v in intermediates.values()
            if "__call__" in v and getattr(v["__call__"][0], "ndim", 0) == 4]
    if not maps:
        raise ValueError("The encoder has no submodule with a spatial (4-D) output: the proxy tasks "
                         "need a CNN backbone (--config.model.name=nin or resnet*).")
    return maps[-1]


def encode_with_map(encoder: nn.Module, params: Any, batch_stats: Any, x: jax.Array, train: bool = True,
                    rng: jax.Array | None = None, bn_views: int = 1) -> tuple[jax.Array, jax.Array, Any]:
    """(pooled features [N, D], last feature map [N, h, w, C], new batch_stats) of one forward
    pass of `encoder` (training mode: batch statistics; `rng`: its drop_path / dropout rng)."""
    variables = {"params": params, "batch_stats": batch_stats}
    mutable = ["intermediates"] + (["batch_stats"] if train else [])
    pooled, updates = encoder.apply(variables, x, train=train, bn_views=bn_views, mutable=mutable,
                                    capture_intermediates=_direct_child,
                                    rngs={DROP_PATH_RNG: rng} if rng is not None else None)
    return pooled, last_map(updates["intermediates"]), updates.get("batch_stats", batch_stats)


class ColorizationHead(nn.Module):
    """Per-pixel ab-bin logits [N, h, w, num_bins] from a feature map [N, h, w, C]."""

    num_bins: int
    hidden: int = 256

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        norm = norm_layer(train, jnp.float32, bn_views)
        x = nn.Conv(self.hidden, (3, 3), padding="SAME", use_bias=False, name="conv")(x.astype(jnp.float32))
        x = nn.relu(norm(name="bn")(x))
        return nn.Conv(self.num_bins, (1, 1), name="logits")(x)


class ContextDecoder(nn.Module):
    """The missing region [N, size, size, channels] from a feature map [N, h, w, C] (h = w).

    Upsampling by 2 per transposed conv while the side stays <= size; a final bilinear resize
    only when size / h is not a power of two."""

    size: int
    channels: int = 3
    hidden: int = 256

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        norm = norm_layer(train, jnp.float32, bn_views)
        x = nn.Conv(self.hidden, (1, 1), use_bias=False, name="fc")(x.astype(jnp.float32))
        x = nn.relu(norm(name="fc_bn")(x))
        width, i = self.hidden, 0
        while x.shape[1] * 2 <= self.size:
            width = max(width // 2, 16)
            x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, name=f"up{i}")(x)
            x = nn.relu(norm(name=f"up{i}_bn")(x))
            i += 1
        if x.shape[1] != self.size:
            x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "bilinear")
        return nn.Conv(self.channels, (3, 3), padding="SAME", name="out")(x)
