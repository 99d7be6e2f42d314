"""AET-project (ssl_jax.methods.aet, aet.transform 'projective'): the homography through four
corner correspondences against NumPy's direct linear transform, the sampled family against its
definition, the warp against a pixel-by-pixel NumPy homography, and the regression targets of the
train step against the matrices that made its warped images."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.methods import aet as aet_lib

RNG = np.random.default_rng(0)
CORNERS = np.array(aet_lib.CORNERS)


def dlt_reference(src, dst):
    """NumPy: the homography through 4 correspondences as the null vector of the 8x9 DLT system
    (SVD), scaled so that H₃₃ = 1."""
    rows = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    h = np.linalg.svd(np.asarray(rows, np.float64))[2][-1]
    return (h / h[-1]).reshape(3, 3)


def apply_h(h, points):
    p = np.concatenate([points, np.ones((len(points), 1))], 1) @ h.T
    return p[:, :2] / p[:, 2:]


def homography_warp_reference(image, h):
    """NumPy, pixel by pixel: out[i, j] = bilinear sample of image at H⁻¹(v) (normalised pixel
    centres, the homogeneous point divided by its last coordinate); taps outside are 0."""
    rows, cols, _ = image.shape
    h_inv = np.linalg.inv(h)
    out = np.zeros_like(image, dtype=np.float64)
    for i in range(rows):
        for j in range(cols):
            v = np.array([(j - (cols - 1) / 2) / (cols / 2), (i - (rows - 1) / 2) / (rows / 2)])
            sx, sy = apply_h(h_inv, v[None])[0]
            c, r = sx * (cols / 2) + (cols - 1) / 2, sy * (rows / 2) + (rows - 1) / 2
            r0, c0 = math.floor(r), math.floor(c)
            for rr, cc, wt in ((r0, c0, (1 - (r - r0)) * (1 - (c - c0))), (r0, c0 + 1, (1 - (r - r0)) * (c - c0)),
                               (r0 + 1, c0, (r - r0) * (1 - (c - c0))), (r0 + 1, c0 + 1, (r - r0) * (c - c0))):
                if 0 <= rr < rows and 0 <= cc < cols:
                    out[i, j] += wt * image[rr, cc]
    return out


def test_homography_from_corners_matches_the_numpy_dlt():
    dst = CORNERS[None] * RNG.uniform(0.7, 1.3, (6, 1, 1)) + RNG.uniform(-0.3, 0.3, (6, 4, 2))
    got = np.asarray(aet_lib.homography_from_corners(CORNERS, dst.astype(np.float32)))
    for g, d in zip(got, dst):
        ref = dlt_reference(CORNERS, d)
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(apply_h(g.astype(np.float64), CORNERS), d, atol=1e-5)
    assert np.abs(got[:, 2, :2]).max() > 1e-2  # a real perspective part, not an affine map


def test_sampled_family_moves_the_corners_as_defined():
    """Every sampled homography sends the corners to s·R(k·90°)·c + δ (recomputed here with NumPy's
    rot90 convention: +90° takes x right to y down), with k in {0..3} all drawn, s in [0.8, 1.2] and
    |δ| <= 0.25 (0.125 of a side), so the corner shifts reach their bound."""
    sample = jax.jit(lambda key: (aet_lib.sample_projective_params(key, 4000, 0.125, (0.8, 1.2)),
                                  aet_lib.sample_projective(key, 4000, 0.125, (0.8, 1.2))))
    p, h = sample(jax.random.PRNGKey(3))
    p, h = {k: np.asarray(v) for k, v in p.items()}, np.asarray(h, np.float64)
    assert set(np.unique(p["quarter_turns"])) == {0, 1, 2, 3}
    assert p["scale"].min() >= 0.8 and p["scale"].max() <= 1.2
    assert np.abs(p["corner_shift"]).max() <= 0.25 + 1e-6 and np.abs(p["corner_shift"]).max() > 0.24
    np.testing.assert_allclose(h[:, 2, 2], 1.0)
    for i in range(0, 4000, 397):
        k = int(p["quarter_turns"][i])
        rot = np.array([[round(math.cos(k * math.pi / 2)), -round(math.sin(k * math.pi / 2))],
                        [round(math.sin(k * math.pi / 2)), round(math.cos(k * math.pi / 2))]])
        expected = p["scale"][i] * CORNERS @ rot.T + p["corner_shift"][i]
        np.testing.assert_allclose(apply_h(h[i], CORNERS), expected, atol=2e-5)
    # One quarter turn takes the top-left corner to the top-right (x right, y down: clockwise).
    one = np.asarray(jax.jit(aet_lib.projective_matrix)(jnp.int32(1), jnp.float32(1.0), jnp.zeros((4, 2))),
                     np.float64)
    np.testing.assert_allclose(apply_h(one, CORNERS), np.roll(CORNERS, -1, axis=0), atol=1e-6)


def test_warp_matches_a_numpy_homography():
    images = RNG.uniform(size=(2, 9, 8, 3)).astype(np.float32)
    h = np.asarray(jax.jit(aet_lib.sample_projective, static_argnums=(1, 2, 3))(
        jax.random.PRNGKey(5), 2, 0.125, (0.8, 1.2)))
    warp = jax.jit(aet_lib.warp)
    got = np.asarray(warp(images, h))
    for n in range(2):
        np.testing.assert_allclose(got[n], homography_warp_reference(images[n], h[n].astype(np.float64)),
                                   atol=2e-5)
    # An affine [A | t] and its 3x3 form warp alike.
    affine = np.asarray(aet_lib.affine_matrix(jnp.float32(0.4), jnp.asarray([0.1, -0.2]), jnp.float32(1.1),
                                              jnp.float32(0.2)))
    full = np.concatenate([affine, [[0.0, 0.0, 1.0]]])
    np.testing.assert_allclose(np.asarray(warp(images[:1], affine[None])), np.asarray(warp(images[:1], full[None])),
                               atol=1e-6)


def test_train_step_regresses_the_matrix_that_made_the_warped_image():
    """One image: with V₁'s kernel zeroed and its bias b, the loss is ½‖b − target‖², so the
    target t is read off as t_i = L(0) − L(e_i) + ½. It must be the 8 free entries of the
    homography that warped the image (`transformed` with the step's key fold_in(rng, 2)), and that
    image must be the NumPy warp of the input's pixels by the homography rebuilt from t."""
    from configs import aet as aet_config
    from ssl_jax.methods import build_method

    config = aet_config.get_config("demo_projective")
    config.model.update(dict(name="resnet10", conv_backend="xla"))
    method = build_method(config, total_steps=10, steps_per_epoch=5)
    params, stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
    assert params["decoder"]["dense1"]["kernel"].shape[-1] == 8
    x = jnp.asarray(RNG.normal(size=(1, 16, 16, 3)), jnp.float32)
    rng, step = jax.random.PRNGKey(7), jnp.int32(0)

    @jax.jit
    def loss_at(bias):
        dense = {"kernel": jnp.zeros_like(params["decoder"]["dense1"]["kernel"]), "bias": bias}
        p = dict(params, decoder={"dense1": dense})
        return method.loss(p, stats, state, {"views": (x,)}, rng, step)[0]

    base = float(loss_at(jnp.zeros(8)))
    target = np.array([base - float(loss_at(jnp.eye(8)[i])) + 0.5 for i in range(8)])
    xt, matrices = jax.jit(method.transformed)(x, jax.random.fold_in(rng, 2))
    assert matrices.shape == (1, 3, 3)
    np.testing.assert_allclose(target, np.asarray(matrices).reshape(9)[:8], atol=2e-4)
    rebuilt = np.append(target, 1.0).reshape(3, 3)
    pixels = np.asarray(method.pixels(x))[0].astype(np.float64)
    expected = np.asarray(method.normalise(homography_warp_reference(pixels, rebuilt).astype(np.float32)))
    np.testing.assert_allclose(np.asarray(xt)[0], expected, atol=2e-3)
