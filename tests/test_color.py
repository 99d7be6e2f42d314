"""sRGB -> Lab on device and the in-gamut ab bins of colorization (ssl_jax.data.color)."""
import numpy as np
import pytest

from ssl_jax.data import color


def reference_lab(rgb):
    """CIE Lab from sRGB, written out from the standard's formulas in float64 NumPy."""
    rgb = np.asarray(rgb, np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    x = 0.4124564 * lin[..., 0] + 0.3575761 * lin[..., 1] + 0.1804375 * lin[..., 2]
    y = 0.2126729 * lin[..., 0] + 0.7151522 * lin[..., 1] + 0.0721750 * lin[..., 2]
    z = 0.0193339 * lin[..., 0] + 0.1191920 * lin[..., 1] + 0.9503041 * lin[..., 2]

    def f(t):
        return np.where(t > (6 / 29) ** 3, t ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29)

    fx, fy, fz = f(x / 0.95047), f(y / 1.0), f(z / 1.08883)
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -1)


@pytest.mark.parametrize("rgb, lab", [((1, 1, 1), (100, 0, 0)), ((1, 0, 0), (53.24, 80.09, 67.20)),
                                      ((0, 0, 0), (0, 0, 0)), ((0, 1, 0), (87.73, -86.18, 83.18)),
                                      ((0, 0, 1), (32.30, 79.19, -107.86))])
def test_known_colours(rgb, lab):
    np.testing.assert_allclose(np.asarray(color.rgb_to_lab(np.array(rgb, np.float32))), lab, atol=0.01)


def test_random_colours_match_numpy_reference():
    rgb = np.random.default_rng(0).uniform(size=(1000, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(color.rgb_to_lab(rgb)), reference_lab(rgb), atol=2e-3)


def test_grey_of_lightness_keeps_lightness():
    rgb = np.random.default_rng(1).uniform(size=(200, 3)).astype(np.float32)
    lab = np.asarray(color.rgb_to_lab(rgb))
    grey = np.asarray(color.grey_of_lightness(lab[:, 0]))
    back = np.asarray(color.rgb_to_lab(np.repeat(grey[:, None], 3, axis=1)))
    np.testing.assert_allclose(back[:, 0], lab[:, 0], atol=2e-3)  # the same L ...
    np.testing.assert_allclose(back[:, 1:], 0.0, atol=2e-3)  # ... and no colour


def test_ab_bins_are_the_cells_8bit_colours_reach():
    bins = color.ab_bins()
    assert bins.shape == (261, 2)  # not Zhang et al.'s 313: ssl_jax.data.color's docstring
    assert np.all(bins % 10 == 0) and len(np.unique(bins, axis=0)) == len(bins)
    # Every 8-bit colour lands in a bin (a random 50k of the 2^24) ...
    rgb = np.random.default_rng(2).integers(0, 256, size=(50_000, 3)) / 255.0
    cells = np.round(reference_lab(rgb)[:, 1:] / 10) * 10
    keys = {tuple(b) for b in bins}
    assert all(tuple(c) in keys for c in np.unique(cells, axis=0))
    # ... and the bins' extremes are those of the sRGB gamut's ab projection.
    assert (bins[:, 0].min(), bins[:, 0].max(), bins[:, 1].min(), bins[:, 1].max()) == (-90, 100, -110, 90)
