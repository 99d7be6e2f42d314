"""VGG-16-BN (DeeperCluster backbone) and the fixed Sobel input layer on every CNN backbone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import presets
from ssl_jax.models import VGG_FIELDS, ResNet, build_encoder
from ssl_jax.models.sobel import sobel_filter
from ssl_jax.models.vgg import VGG16
from ssl_jax.models.vit import DROP_PATH_RNG

BASE_CHANNELS = {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512, "conv5": 512}
# Configuration D as (block, base out channels of each conv), written out here, not read from
# the module.
CONFIG_D = [(1, [64, 64]), (2, [128, 128]), (3, [256, 256, 256]), (4, [512, 512, 512]),
            (5, [512, 512, 512])]


def _images(n, size, seed=0, channels=3):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, channels), jnp.float32)


def _init(model, x, seed=0):
    return model.init(jax.random.PRNGKey(seed), x, train=False)


def _count(tree):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def _model_cfg(**overrides):
    cfg = presets.base_config("byol").model
    cfg.update({"dtype": "float32", "conv_backend": "xla", **overrides})
    return cfg


@pytest.mark.parametrize("width", [0.125, 1.0])
@pytest.mark.parametrize("size,cifar_stem", [(16, True), (32, True), (224, True), (32, False), (224, False)])
def test_output_and_stage_shapes(size, cifar_stem, width):
    """Shapes only (jax.eval_shape: nothing is computed), for every layout and width."""
    model = VGG16(width_multiplier=width, cifar_stem=cifar_stem)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    init = lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False, return_stages=True)
    stages, variables = jax.eval_shape(init, x)
    d = int(round(4096 * width))
    assert model.feature_dim == d
    expected = {name: (2, int(round(c * width))) for name, c in BASE_CHANNELS.items()}
    expected.update(fc6=(2, d), fc7_pre_relu=(2, d), pooled=(2, d))
    assert {k: v.shape for k, v in stages.items()} == expected
    assert all(v.dtype == jnp.float32 for v in stages.values())
    grid = 2 if cifar_stem else 7
    assert variables["params"]["fc6"]["kernel"].shape == (int(round(512 * width)) * grid * grid, d)
    h = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert h.shape == (2, d) and h.dtype == jnp.float32


def test_parameter_count_matches_vgg16_bn_without_conv_biases():
    """224 px, width 1: VGG-16-BN's features + fc6 + fc7 (no fc8), less its 13 conv biases
    (each is followed by a BN, which cancels a bias), counted by hand; with Sobel, conv1_1
    has 2 input channels."""
    for sobel, in_ch in ((False, 3), (True, 2)):
        model = VGG16(sobel=sobel)
        shapes = jax.eval_shape(lambda x: _init(model, x), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
        expected, prev = 0, in_ch
        for _, channels in CONFIG_D:
            for c in channels:
                expected += 3 * 3 * prev * c + 2 * c  # kernel + BN scale and bias
                prev = c
        expected += 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096
        assert _count(shapes["params"]) == expected
        if not sobel:
            # torchvision's vgg16_bn: 138,365,992 parameters, less fc8 (4096·1000 + 1000) and
            # the 13 conv biases (2·64 + 2·128 + 3·256 + 6·512).
            assert expected == 138_365_992 - 4_097_000 - 4_224
        params = shapes["params"]
        assert set(params) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
        assert {k: sorted(params[f"conv{k}"]) for k, _ in CONFIG_D} == {
            k: [f"conv{k}_{i + 1}" for i in range(len(c))] for k, c in CONFIG_D}
        assert params["conv1"]["conv1_1"]["conv"]["kernel"].shape == (3, 3, in_ch, 64)
        assert "bias" not in params["conv1"]["conv1_1"]["conv"]


def test_imagenet_layout_rejects_small_inputs():
    model = VGG16(width_multiplier=0.125)
    with pytest.raises(ValueError, match="at least 32 px.*cifar_stem=True"):
        jax.eval_shape(lambda x: _init(model, x), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))


@pytest.fixture(scope="module")
def small():
    """(model, images, variables): width 0.125, the CIFAR layout at 16 px, initialised once."""
    model = VGG16(width_multiplier=0.125, cifar_stem=True)
    x = _images(4, 16)
    return model, x, _init(model, x)


def test_initialisation_is_deepcluster_style(small):
    params = small[2]["params"]
    conv = params["conv5"]["conv5_3"]["conv"]["kernel"]  # 3x3, 64 -> 64
    assert conv.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(np.std(conv), np.sqrt(2.0 / (3 * 3 * 64)), rtol=0.03)
    np.testing.assert_allclose(np.std(params["fc7"]["kernel"]), 0.01, rtol=0.03)
    assert not np.any(params["fc6"]["bias"]) and not np.any(params["fc7"]["bias"])
    bn = params["conv1"]["conv1_1"]["bn"]
    assert np.all(bn["scale"] == 1.0) and not np.any(bn["bias"])


def test_forward_stages_pre_relu_and_depth_order(small):
    model, x, variables = small
    run = jax.jit(lambda v, x: (model.apply(v, x, train=False, return_stages=True),
                                model.apply(v, x, train=False),
                                model.apply(v, x, train=False, pre_relu=True)))
    stages, h, pre = run(variables, x)
    assert h.shape == (4, 512) and bool(jnp.all(jnp.isfinite(h))) and bool(jnp.all(h >= 0))
    np.testing.assert_array_equal(stages["pooled"], h)
    np.testing.assert_array_equal(stages["fc7_pre_relu"], pre)
    np.testing.assert_array_equal(jax.nn.relu(pre), h)
    assert float(jnp.min(pre)) < 0.0
    # The per-layer probes (evaluate.run) order layers by the number their digits spell.
    digits = lambda name: (name == "pooled", int("0" + "".join(c for c in name if c.isdigit())))
    assert sorted(stages, key=digits) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6",
                                          "fc7_pre_relu", "pooled"]


def test_dropout_only_in_training_with_the_drop_path_rng(small):
    model, x, variables = small

    def train(rng, use_rng, dropout=0.5):
        m = VGG16(width_multiplier=0.125, cifar_stem=True, dropout=dropout)
        rngs = {DROP_PATH_RNG: rng} if use_rng else {}
        return m.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    train = jax.jit(train, static_argnums=(1, 2))
    a, b, none = train(jax.random.PRNGKey(1), True), train(jax.random.PRNGKey(2), True), train(None, False)
    assert not np.allclose(a, b) and not np.allclose(a, none)
    np.testing.assert_array_equal(a, train(jax.random.PRNGKey(1), True))
    evaluate = jax.jit(lambda rng: model.apply(variables, x, train=False, rngs={DROP_PATH_RNG: rng}))
    np.testing.assert_array_equal(evaluate(jax.random.PRNGKey(1)), evaluate(jax.random.PRNGKey(2)))


def test_remat_changes_nothing_but_memory(small):
    """Same outputs and BN statistics, and the gradient program holds the recomputation."""
    _, x, variables = small
    models = [VGG16(width_multiplier=0.125, cifar_stem=True, remat=r) for r in (False, True)]
    outs = [jax.jit(lambda v, m=m: m.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
            for m in models]
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), *outs)
    loss = lambda p: jnp.sum(models[1].apply({**variables, "params": p}, x, train=True,
                                             mutable=["batch_stats"])[0] ** 2)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
    assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_bfloat16_compute_float32_outputs():
    model = VGG16(width_multiplier=0.125, cifar_stem=True, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    stages, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False, return_stages=True), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert all(v.dtype == jnp.float32 for v in stages.values())


def test_build_encoder_vgg16_reads_every_field():
    assert set(VGG_FIELDS) <= set(presets.base_config("byol").model)
    enc = build_encoder(_model_cfg(name="vgg16", width=0.25, cifar_stem=True, sobel=True, dropout=0.1,
                                   remat=True))
    assert isinstance(enc, VGG16)
    assert (enc.width_multiplier, enc.cifar_stem, enc.sobel, enc.dropout, enc.dtype, enc.remat) == (
        0.25, True, True, 0.1, jnp.float32, True)
    assert enc.feature_dim == 1024
    cfg = _model_cfg(name="vgg16").to_dict()
    del cfg["dropout"]
    with pytest.raises(ValueError, match=r"config.model lacks the field\(s\) 'dropout'"):
        build_encoder(cfg)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        build_encoder(_model_cfg(name="vgg16", dropout=1.0))
    with pytest.raises(ValueError, match=r"vgg16"):
        build_encoder(_model_cfg(name="vgg19"))


def _sobel_reference(images):
    """Mean of the channels, zero-padded by 1, then the Sobel cross-correlations as sums of
    shifted slices weighted by the kernel entries written out here, in float64."""
    gray = np.pad(images.astype(np.float64).mean(-1), ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:3]
    win = lambda i, j: gray[:, i:i + h, j:j + w]  # neighbour (i - 1, j - 1) of every pixel
    gx = (win(0, 0) + 2 * win(1, 0) + win(2, 0)) - (win(0, 2) + 2 * win(1, 2) + win(2, 2))
    gy = (win(0, 0) + 2 * win(0, 1) + win(0, 2)) - (win(2, 0) + 2 * win(2, 1) + win(2, 2))
    return np.stack([gx, gy], -1)


def test_sobel_reference_agrees_with_the_layer():
    images = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(sobel_filter(jnp.asarray(images))), _sobel_reference(images),
                               rtol=1e-5, atol=1e-5)


def test_resnet_with_sobel_is_the_two_channel_resnet_on_sobel_input():
    imagenet = build_encoder(_model_cfg(name="resnet18", sobel=True))
    shapes = jax.eval_shape(lambda x: _init(imagenet, x), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert shapes["params"]["stem_conv"]["kernel"].shape == (7, 7, 2, 64)
    assert _count(shapes["params"]) == 11_176_512 - 7 * 7 * 64  # one input channel fewer
    enc = build_encoder(_model_cfg(name="resnet18", width=0.125, cifar_stem=True, sobel=True))
    assert isinstance(enc, ResNet) and enc.sobel
    images = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    variables = _init(enc, jnp.asarray(images))
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 2, 8)
    plain = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)  # sees the 2 channels
    sobel_images = jnp.asarray(_sobel_reference(images), jnp.float32)
    for train in (False, True):
        a, sa = enc.apply(variables, jnp.asarray(images), train=train, mutable=["batch_stats"])
        b, sb = plain.apply(variables, sobel_images, train=train, mutable=["batch_stats"])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5), sa, sb)


def test_resnet_without_sobel_is_unchanged():
    """sobel=False (the default) is the ResNet as before the option: 3-channel stem, the same
    parameter tree (torchvision's count) and bit-identical outputs."""
    shapes = jax.eval_shape(lambda x: _init(build_encoder(_model_cfg(name="resnet18")), x),
                            jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert shapes["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
    assert _count(shapes["params"]) == 11_176_512  # torchvision resnet18 without fc
    enc = build_encoder(_model_cfg(name="resnet18", width=0.125, cifar_stem=True))
    assert enc.sobel is False
    x = _images(4, 16)
    variables = _init(enc, x)
    ref = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True)
    ref_vars = _init(ref, x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, ref_vars)
    jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)
    np.testing.assert_array_equal(enc.apply(variables, x, train=False), ref.apply(ref_vars, x, train=False))


def test_vit_rejects_sobel():
    with pytest.raises(ValueError, match=r"sobel=True applies to the CNN backbones only.*'vit_small'.*"
                                         r"sobel=False"):
        build_encoder(_model_cfg(name="vit_small", sobel=True))
