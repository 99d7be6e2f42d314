"""DeepCluster's fixed Sobel input layer (Caron et al. 2018; also DeeperCluster, Caron et al.
2019), shared by every CNN backbone here (AlexNet, VGG-16, ResNet: ``config.model.sobel``).

The layer removes colour so that clustering cannot latch onto it: grayscale, then horizontal
and vertical Sobel gradients. Constants, not parameters: nothing here is trained, and the
backbone's first conv sees 2 input channels instead of 3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Sobel kernels in DeepCluster's (cross-correlation) orientation, [kh, kw]: the first responds
# to horizontal intensity changes (x), the second to vertical ones (y).
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)
SOBEL_CHANNELS = 2  # what the first conv sees behind the layer


def sobel_filter(x: jax.Array) -> jax.Array:
    """DeepCluster's fixed Sobel input layer: images [N, H, W, C] -> [N, H, W, 2].

    Grayscale as DeepCluster's 1x1 conv with every weight 1/3 (the plain mean of the
    channels, not luminance weights; any C, so a grayscale image passes through), then a
    cross-correlation with SOBEL_X and SOBEL_Y, zero padding 1, no bias. Computed in float32,
    returned in x's dtype."""
    gray = jnp.mean(x.astype(jnp.float32), axis=-1, keepdims=True)
    kernel = jnp.asarray(np.stack([SOBEL_X, SOBEL_Y], -1)[:, :, None, :])  # HWIO [3, 3, 1, 2]
    out = jax.lax.conv_general_dilated(gray, kernel, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    return out.astype(x.dtype)
