"""CIE Lab colour on device and the quantised ab space of colorization (Zhang et al., ECCV 2016).

sRGB (IEC 61966-2-1, values in [0, 1]) -> linear RGB -> XYZ (D65, the sRGB primaries' matrix)
-> CIE Lab relative to the D65 white (0.95047, 1, 1.08883), all in float32 (jnp, so it runs
inside the jitted step on each device's slice of the batch).

The ab output space of colorization is the 10-unit ab grid restricted to its in-gamut cells.
`ab_bins` derives them here rather than loading Zhang et al.'s file: a bin (centre (10i, 10j))
is kept when its cell [10i - 5, 10i + 5) x [10j - 5, 10j + 5) is reached by some 8-bit sRGB
colour. That gives **261** bins, not the paper's 313. Why: the paper says only "we quantize the
ab output space into bins with grid size 10 and keep the Q = 313 values which are in-gamut"
without the test it used; the bins reached by colours are exactly these 261 (checked against
all 2^24 8-bit colours, the cube's faces at full 8-bit resolution plus a 64^3 interior grid
being enough, see `ab_bins`); looser criteria do not give 313 either (centres within 5√2 of
the gamut's ab projection: 267; within 10: 290; grid centres in its convex hull: 233). The
52 further bins of the released file cannot be reached by any sRGB image, so their classes
would never be a target's nearest bin; a head here has len(ab_bins()) outputs.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

# sRGB primaries -> XYZ (D65), rows X, Y, Z (IEC 61966-2-1).
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], np.float32)
D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)
_DELTA = 6.0 / 29.0
AB_GRID = 10.0  # Zhang et al.'s bin size in ab units


def srgb_to_linear(rgb):
    """The sRGB transfer function inverted (per channel, values in [0, 1])."""
    rgb = jnp.asarray(rgb, jnp.float32)
    return jnp.where(rgb <= 0.04045, rgb / 12.92, ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(lin):
    """The sRGB transfer function (linear light in [0, 1] -> sRGB value)."""
    lin = jnp.asarray(lin, jnp.float32)
    return jnp.where(lin <= 0.0031308, 12.92 * lin, 1.055 * jnp.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055)


def _f(t):
    # The CIE Lab companding; the linear piece below (6/29)^3 keeps it finite and smooth at 0.
    return jnp.where(t > _DELTA ** 3, jnp.cbrt(jnp.maximum(t, _DELTA ** 3)), t / (3 * _DELTA ** 2) + 4.0 / 29.0)


def rgb_to_lab(rgb):
    """sRGB [..., 3] in [0, 1] -> CIE Lab [..., 3] (L in [0, 100]; D65), float32."""
    xyz = srgb_to_linear(rgb) @ jnp.asarray(SRGB_TO_XYZ).T
    f = _f(xyz / jnp.asarray(D65_WHITE))
    return jnp.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                      200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def grey_of_lightness(lightness):
    """The sRGB grey value [...] of the colour (L, 0, 0): its linear value is the luminance Y of
    lightness L (relative to white), so a grey image of these values carries exactly the L
    channel (L <-> Y <-> grey is one-to-one)."""
    fy = (jnp.asarray(lightness, jnp.float32) + 16.0) / 116.0
    y = jnp.where(fy > _DELTA, fy ** 3, 3 * _DELTA ** 2 * (fy - 4.0 / 29.0))
    return linear_to_srgb(jnp.clip(y, 0.0, 1.0))


def _np_rgb_to_ab(rgb: np.ndarray) -> np.ndarray:
    """NumPy float64 sRGB -> ab, for the host-side bin derivation only."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = (lin @ SRGB_TO_XYZ.T.astype(np.float64)) / D65_WHITE.astype(np.float64)
    f = np.where(t > _DELTA ** 3, np.cbrt(t), t / (3 * _DELTA ** 2) + 4.0 / 29.0)
    return np.stack([500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], axis=-1)


@functools.lru_cache(maxsize=None)
def _ab_bins() -> np.ndarray:
    levels = np.arange(256) / 255.0
    # The ab projection of the sRGB cube is reached at its extremes by the cube's faces: every
    # 8-bit colour on the six faces plus a 64^3 interior grid reach exactly the cells all 2^24
    # 8-bit colours reach (checked once against the full enumeration, which takes ~25 s).
    u, v = (a.ravel() for a in np.meshgrid(levels, levels, indexing="ij"))
    points = [np.stack(np.meshgrid(*[np.linspace(0, 1, 64)] * 3, indexing="ij"), -1).reshape(-1, 3)]
    for axis in range(3):
        for value in (0.0, 1.0):
            cols = [u, v]
            cols.insert(axis, np.full_like(u, value))
            points.append(np.stack(cols, -1))
    cells = np.round(_np_rgb_to_ab(np.concatenate(points)) / AB_GRID).astype(np.int64)
    cells = np.unique(cells, axis=0)  # sorted by a, then b
    return (cells * AB_GRID).astype(np.float32)


def ab_bins() -> np.ndarray:
    """[Q, 2] the centres (a, b) of the in-gamut bins of the 10-unit ab grid (Q = 261; module
    docstring), sorted by a then b."""
    return _ab_bins().copy()
