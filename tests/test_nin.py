"""RotNet's Network-in-Network (models.nin): block shapes, width, parameter count, pools, config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import presets
from ssl_jax.models import build_encoder
from ssl_jax.models.nin import NIN, nin_pool

# RotNet's NIN4blocks written out by hand: per block, (kernel, in, out) of its three convs.
ROTNET_LAYOUT = (((5, 3, 192), (1, 192, 160), (1, 160, 96)),
                 ((5, 96, 192), (1, 192, 192), (1, 192, 192)),
                 ((3, 192, 192), (1, 192, 192), (1, 192, 192)),
                 ((3, 192, 192), (1, 192, 192), (1, 192, 192)))


def _shapes(model, size, **kw):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False, **kw), x)


@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_block_maps_and_pooled_shapes(size, width):
    """32 px: B1 96x16x16, B2..B4 192x8x8 (SSL++'s evaluated maps); 16 px: half the side.
    Shapes only (jax.eval_shape: nothing is computed)."""
    model = NIN(width_multiplier=width)
    c1, c = int(round(96 * width)), int(round(192 * width))
    maps, _ = _shapes(model, size, return_maps=True)
    q = size // 4
    assert {k: v.shape for k, v in maps.items()} == {
        "block1": (2, size // 2, size // 2, c1), "block2": (2, q, q, c), "block3": (2, q, q, c),
        "block4": (2, q, q, c)}
    stages, _ = _shapes(model, size, return_stages=True)
    assert {k: v.shape for k, v in stages.items()} == {"block1": (2, c1), "block2": (2, c), "block3": (2, c),
                                                      "block4": (2, c), "pooled": (2, c)}
    assert all(v.dtype == jnp.float32 for v in stages.values())
    out, _ = _shapes(model, size)
    assert out.shape == (2, model.feature_dim) and model.feature_dim == c
    first_two, _ = _shapes(model, size, return_maps=True, up_to=2)
    assert sorted(first_two) == ["block1", "block2"]


@pytest.mark.parametrize("width,sobel", [(1.0, False), (0.25, False), (1.0, True)])
def test_parameter_count_matches_hand_count(width, sobel):
    """Every conv has no bias (a BN follows) and each BN a scale and a bias: the count of the
    hand-written layout above, channels scaled by width (Sobel: 2 input channels)."""
    _, variables = _shapes(NIN(width_multiplier=width, sobel=sobel), 32)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    scale = lambda ch: ch if ch in (2, 3) else int(round(ch * width))
    expected = sum(k * k * scale(i) * scale(o) + 2 * scale(o) for block in ROTNET_LAYOUT for k, i, o in block)
    if sobel:
        expected -= 5 * 5 * (3 - 2) * 192
    assert count == expected
    assert set(variables["params"]) == {"block1", "block2", "block3", "block4"}
    assert set(variables["params"]["block2"]) == {"conv1", "conv2", "conv3"}
    if width == 1.0 and not sobel:
        assert count == 61_376 + 535_680 + 2 * 406_656  # per block, summed by hand once


def test_pools_follow_pytorch_padding():
    """Max-pool ignores its padding (all-negative input stays negative); the average pool
    divides by 9 at the border too (count_include_pad=True), as RotNet's nn.AvgPool2d."""
    x = -1.0 - jax.random.uniform(jax.random.PRNGKey(0), (1, 6, 6, 2))
    np.testing.assert_array_less(np.asarray(nin_pool(x, "max")), 0.0)
    xn = np.asarray(x)
    avg = np.asarray(nin_pool(x, "avg"))
    assert avg.shape == (1, 3, 3, 2)
    np.testing.assert_allclose(avg[0, 0, 0], xn[0, :2, :2].sum(axis=(0, 1)) / 9, rtol=1e-6)
    np.testing.assert_allclose(avg[0, 1, 1], xn[0, 1:4, 1:4].sum(axis=(0, 1)) / 9, rtol=1e-6)
    assert nin_pool(x, None) is x


def test_built_from_config_and_forward_is_finite():
    cfg = presets.base_config("rotnet").model
    cfg.update(dict(name="nin", width=0.125, dtype="float32", conv_backend="xla"))
    model = build_encoder(cfg)
    assert isinstance(model, NIN) and model.feature_dim == 24
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    h, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert h.shape == (4, 24) and np.all(np.isfinite(np.asarray(h))) and np.all(np.asarray(h) >= 0)
    stages = model.apply(variables, x, train=False, return_stages=True)
    np.testing.assert_array_equal(stages["pooled"], stages["block4"])
    maps = model.apply(variables, x, train=False, return_maps=True)
    np.testing.assert_allclose(stages["block3"], np.asarray(maps["block3"]).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="up_to"):
        model.apply(variables, x, train=False, return_maps=True, up_to=5)
    with pytest.raises(ValueError, match="Unknown NIN name"):
        from ssl_jax.models.nin import build_nin
        build_nin(dict(cfg, name="nin5"))


def test_export_flattens_nin_params_and_refuses_torchvision():
    """Params export (safetensors / flax layout) round-trips; the torchvision format, which has
    no NIN, is one error naming the formats that work."""
    import ml_collections

    from ssl_jax import export
    from ssl_jax.pretrained import Pretrained

    model = NIN(width_multiplier=0.125)
    variables = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False))
    flat = export.flatten_variables(variables)
    assert any("block4" in k for k in flat)
    back, heads = export.unflatten_variables(flat)
    assert heads == {} and jax.tree.structure(back) == jax.tree.structure(dict(variables))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(dict(variables))):
        np.testing.assert_array_equal(a, b)
    pre = Pretrained(encoder=model, variables=variables, heads={}, model_config=ml_collections.ConfigDict(
        dict(name="nin")), run={}, network="online")
    with pytest.raises(ValueError, match="safetensors"):
        export.to_torchvision(pre)
