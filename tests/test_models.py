"""Tests for ssl_jax.models: ResNet encoders and MLP heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import presets
from ssl_jax.models import BasicBlock, Bottleneck, MLPHead, ResNet, build_encoder


def _model_cfg(**fields):
    """A complete config.model (base_config's) with float32 compute and XLA's convolutions,
    updated with `fields`."""
    cfg = presets.base_config("byol").model
    cfg.update({"dtype": "float32", "conv_backend": "xla", **fields})
    return cfg


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,cifar_stem,expected", [
    ("resnet18", True, 64), ("resnet18", False, 64),
    ("resnet50", True, 256), ("resnet50", False, 256),
])
def test_feature_dims(name, cifar_stem, expected):
    model = build_encoder(_model_cfg(name=name, width=0.125, cifar_stem=cifar_stem))
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.shape == (2, expected) == (2, model.feature_dim)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("depth,expected", [(18, 11_176_512), (50, 23_508_032)])
def test_param_counts_match_torchvision_without_fc(depth, expected):
    model = ResNet(depth=depth)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert _num_params(variables["params"]) == expected


def test_return_stages_keys_and_shapes():
    model = ResNet(depth=18, width_multiplier=0.25, cifar_stem=True)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False, return_stages=True),
                         variables)
    assert {k: v.shape for k, v in out.items()} == {
        "stage1": (2, 16), "stage2": (2, 32), "stage3": (2, 64), "stage4": (2, 128),
        "pooled": (2, 128)}


def test_bfloat16_compute_float32_params():
    model = build_encoder(_model_cfg(name="resnet18", width=0.125, cifar_stem=True, dtype="bfloat16"))
    x = jnp.zeros((2, 8, 8, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def _numpy_variables(model, x):
    """Variables with the model's shapes but cheap NumPy values: eager flax init
    compiles one random op per parameter shape, which is slow on CPU."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.3 * rng.normal(size=s.shape) + (s.ndim == 1)).astype(np.float32),
        shapes["params"])
    stats = jax.tree_util.tree_map_with_path(
        lambda path, s: np.full(s.shape, float(path[-1].key == "var"), np.float32),
        shapes["batch_stats"])
    return {"params": params, "batch_stats": stats}


def test_batch_stats_update_only_in_train_mode():
    model = ResNet(depth=18, width_multiplier=0.0625, cifar_stem=True)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    variables = _numpy_variables(model, x)

    _, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                           variables["batch_stats"], train_state["batch_stats"])
    assert all(jax.tree.leaves(changed))
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"],
                 eval_state["batch_stats"])


@pytest.mark.parametrize("block,last_bn", [(BasicBlock, "bn2"), (Bottleneck, "bn3")])
def test_zero_init_residual(block, last_bn):
    x = jnp.zeros((1, 4, 4, 4))
    for zero, fill in [(True, 0.0), (False, 1.0)]:
        params = block(filters=4, strides=2, zero_init_residual=zero).init(
            jax.random.key(0), x, train=False)["params"]
        np.testing.assert_array_equal(params[last_bn]["scale"], fill)
        np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
        assert "proj_conv" in params


@pytest.mark.parametrize("num_layers,output_bn,hidden_bn,output_bias", [
    (2, "none", True, True), (3, "affine", True, True), (1, "none", True, True),
    (3, "plain", True, True), (3, "scale", True, False), (2, "none", False, True)])
def test_mlp_head(num_layers, output_bn, hidden_bn, output_bias):
    head = MLPHead(hidden_dim=16, output_dim=8, num_layers=num_layers, output_bn=output_bn,
                   hidden_bn=hidden_bn, output_bias=output_bias)
    x = jax.random.normal(jax.random.key(0), (6, 12))
    variables = head.init(jax.random.key(1), x, train=False)
    out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (6, 8)
    params = variables["params"]
    dense = sorted(k for k in params if k.startswith("dense"))
    bns = sorted(k for k in variables["batch_stats"]) if "batch_stats" in variables else []
    assert len(dense) == num_layers
    assert len(bns) == (num_layers - 1) * int(hidden_bn) + int(output_bn != "none")
    assert ("bias" in params[f"dense{num_layers}"]) == output_bias
    out_bn = params.get(f"bn{num_layers}", {})
    assert ("scale" in out_bn) == (output_bn in ("affine", "scale"))
    assert ("bias" in out_bn) == (output_bn == "affine")
    if output_bn != "none":
        # Training-mode BN with scale 1, offset 0: zero mean, unit variance per dim.
        np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(out.var(0), 1.0, rtol=1e-3)


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"resnet13.*resnet18.*resnet50"):
        build_encoder(_model_cfg(name="resnet13"))


def test_missing_model_field_is_a_clear_error():
    """Fields are read strictly (defaults live in presets.base_config): a missing one is named."""
    cfg = _model_cfg(name="resnet18").to_dict()
    del cfg["conv_backend"]
    with pytest.raises(ValueError, match=r"config.model lacks the field\(s\) 'conv_backend'.*complete_config"):
        build_encoder(cfg)
    with pytest.raises(ValueError, match=r"'drop_path_rate'"):
        build_encoder({"name": "vit_tiny", "patch_size": 8, "pos_embedding": "sincos", "dtype": "float32",
                       "remat": False})


def test_build_head_needs_a_complete_head_config():
    from ssl_jax.models import build_head
    head = build_head(presets.head(16, 8, num_layers=3, output_bn="plain"))
    assert (head.hidden_dim, head.output_dim, head.num_layers, head.output_bn) == (16, 8, 3, "plain")
    with pytest.raises(ValueError, match=r"missing \['num_layers'.*presets.head"):
        build_head(dict(hidden_dim=16, output_dim=8))
    with pytest.raises(ValueError, match=r"unknown \['width'\]"):
        build_head(dict(presets.head(16, 8), width=2))


def test_dino_head_last_layer_is_weight_normalised():
    from ssl_jax.models import DINOHead
    head = DINOHead(hidden_dim=16, bottleneck_dim=8, output_dim=32, num_layers=3)
    x = jax.random.normal(jax.random.key(0), (5, 12))
    variables = head.init(jax.random.key(1), x, train=False)
    assert "batch_stats" not in variables and "last_layer_gain" not in variables["params"]
    out = head.apply(variables, x, train=False)
    assert out.shape == (5, 32) and out.dtype == jnp.float32
    # The bottleneck is L2-normalised and the last layer's columns are unit vectors, so every
    # logit is a cosine: |logit| <= 1, and scaling the raw last layer changes nothing.
    assert np.all(np.abs(out) <= 1.0 + 1e-5)
    scaled = jax.tree.map(lambda a: a, variables)
    scaled["params"]["last_layer"] = 7.0 * variables["params"]["last_layer"]
    np.testing.assert_allclose(head.apply(scaled, x, train=False), out, rtol=1e-5, atol=1e-6)
    free = DINOHead(hidden_dim=16, bottleneck_dim=8, output_dim=32, norm_last_layer=False, use_bn=True)
    fv = free.init(jax.random.key(1), x, train=False)
    assert fv["params"]["last_layer_gain"].shape == (32,) and "batch_stats" in fv


def test_prototypes_normalisation():
    from ssl_jax.models import Prototypes, normalize_prototypes
    protos = Prototypes(num_prototypes=6)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params = normalize_prototypes(protos.init(jax.random.key(1), x, train=False)["params"])
    np.testing.assert_allclose(np.linalg.norm(params["kernel_layer"]["kernel"], axis=0), 1.0, rtol=1e-6)
    scores = protos.apply({"params": params}, x, train=False)
    assert scores.shape == (4, 6) and np.all(np.abs(scores) <= 1.0 + 1e-5)  # cosines


@pytest.mark.parametrize("cfg", [dict(name="resnet18", width=0.25, cifar_stem=True),
                                 dict(name="vit_tiny", patch_size=8)])
def test_remat_changes_memory_not_results(cfg):
    """model.remat wraps every block in nn.remat: same params, loss, grads and BN statistics,
    and the recomputation is really in the program (a checkpoint/remat primitive)."""
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    results = []
    for remat in (False, True):
        model = build_encoder(_model_cfg(**cfg, remat=remat))
        # Compiled, not op by op (several times faster on 2 cores; the compilation cache keeps them).
        variables = jax.jit(lambda key, model=model: model.init(key, x, train=True))(jax.random.key(0))

        def loss(params, model=model, variables=variables):
            out, updates = model.apply({**variables, "params": params}, x, train=True,
                                       mutable=["batch_stats"])
            return jnp.sum(out ** 2), updates

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        (value, updates), grads = jax.jit(grad_fn)(variables["params"])
        jaxpr = str(jax.make_jaxpr(grad_fn)(variables["params"]))
        results.append((variables, value, updates, grads, "remat" in jaxpr or "checkpoint" in jaxpr))
    (v0, l0, u0, g0, r0), (v1, l1, u1, g1, r1) = results
    assert not r0 and r1
    assert jax.tree.structure(v0) == jax.tree.structure(v1)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((u0, g0)), jax.tree.leaves((u1, g1))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
