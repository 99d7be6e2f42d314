"""Tests for ssl_jax.models.vit: the Vision Transformer encoder (MoCo v3 / DINO)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.vit import (
    VIT_VARIANTS,
    VisionTransformer,
    build_vit,
    resize_pos_embedding,
    sincos_2d_position_embedding,
)

# Tiny config: 16x16 images, 4x4 patches -> a 4x4 grid of 16 patch tokens.
TINY = {"patch_size": 4, "hidden_dim": 32, "depth": 2, "num_heads": 4, "image_size": 16}


def _tiny(**kwargs):
    return VisionTransformer(**{**TINY, **kwargs})


def _images(shape=(2, 16, 16, 3), seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def _init(model, x):
    return jax.jit(lambda: model.init(jax.random.key(0), x, train=False))()


def _variables(model, x, seed=0):
    """Variables with the model's shapes but cheap NumPy values (a jitted flax init costs
    ~3 s of compilation on 2 cores): N(0, 0.1²), LayerNorm scales around 1."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (0.1 * rng.normal(size=s.shape)
                         + (path[-1].key == "scale")).astype(np.float32), shapes)


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _expected_count(hidden, depth, patch=16, image=224, learned=True):
    """ViT parameters without a classifier, from the architecture (D = hidden):
      patch_embed   3·p²·D + D              (conv kernel + bias)
      cls_token     D
      pos_embedding (1 + (image/p)²)·D      (learned only; sincos is not a parameter)
      per block     12·D² + 13·D            (norm1 2D; qkv 3D² + 3D; proj D² + D;
                                             norm2 2D; fc1 4D² + 4D; fc2 4D² + D)
      final norm    2·D
    """
    tokens = 1 + (image // patch) ** 2
    return ((3 * patch * patch * hidden + hidden) + hidden
            + (tokens * hidden if learned else 0)
            + depth * (12 * hidden ** 2 + 13 * hidden) + 2 * hidden)


@pytest.mark.parametrize("name,pos,expected", [
    # timm vit_small_patch16_224 / vit_base_patch16_224 with num_classes=0.
    ("vit_small", "learned", 21_665_664),
    ("vit_small", "sincos", 21_665_664 - 197 * 384),  # = 21,590,016: no 197x384 pos params
    ("vit_base", "learned", 85_798_656),
])
def test_param_counts_match_timm_without_head(name, pos, expected):
    model = build_vit(name, pos_embedding=pos)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    hidden, depth, _ = VIT_VARIANTS[name]
    assert expected == _expected_count(hidden, depth, learned=(pos == "learned"))
    assert _num_params(variables["params"]) == expected
    assert set(variables) == {"params"}  # no batch_stats


def test_output_shapes_dtypes_and_return_tokens():
    model = _tiny()
    x = _images()
    variables = _variables(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert model.feature_dim == 32
    out = jax.jit(lambda v: model.apply(v, x, train=True))(variables)
    assert out.shape == (2, 32) and out.dtype == jnp.float32
    cls, tokens = jax.jit(lambda v: model.apply(v, x, train=False, return_tokens=True))(
        variables)
    assert cls.shape == (2, 32) and tokens.shape == (2, 16, 32)
    assert cls.dtype == tokens.dtype == jnp.float32
    np.testing.assert_array_equal(cls, out)  # train flag has no effect

    bf16 = _tiny(dtype=jnp.bfloat16)
    cls16, tokens16 = jax.jit(lambda v: bf16.apply(v, x, train=False, return_tokens=True))(
        variables)
    assert cls16.dtype == tokens16.dtype == jnp.float32
    assert tokens16.shape == (2, 16, 32)
    # Same params in bfloat16: close to the float32 result (LayerNorm outputs are O(1)).
    np.testing.assert_allclose(cls16, cls, atol=0.15)


def _mocov3_sincos_reference(h, w, dim, temperature=10000.0):
    """NumPy transcription of MoCo v3's build_2d_sincos_position_embedding (vits.py)."""
    grid_w = np.arange(w, dtype=np.float32)
    grid_h = np.arange(h, dtype=np.float32)
    grid_w, grid_h = np.meshgrid(grid_w, grid_h, indexing="ij")  # torch.meshgrid default
    pos_dim = dim // 4
    omega = np.arange(pos_dim, dtype=np.float32) / pos_dim
    omega = 1.0 / (temperature ** omega)
    out_w = np.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = np.einsum("m,d->md", grid_h.flatten(), omega)
    return np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], 1)


@pytest.mark.parametrize("grid,dim", [(14, 384), (4, 32), (6, 768)])
def test_sincos_matches_mocov3_on_square_grids(grid, dim):
    np.testing.assert_allclose(sincos_2d_position_embedding(grid, grid, dim),
                               _mocov3_sincos_reference(grid, grid, dim), atol=2e-5)


def test_sincos_order_on_non_square_grid():
    # Token row*W + col: [sin(row w), cos(row w), sin(col w), cos(col w)] (the first half
    # encodes the row, as MoCo v3 does on square grids).
    h, w, dim = 3, 5, 16
    emb = sincos_2d_position_embedding(h, w, dim).reshape(h, w, dim)
    omega = 1.0 / 10000.0 ** (np.arange(4) / 4)
    row, col = 2, 3
    expected = np.concatenate([np.sin(row * omega), np.cos(row * omega),
                               np.sin(col * omega), np.cos(col * omega)])
    np.testing.assert_allclose(emb[row, col], expected, atol=1e-6)


def _layer_norm(x, eps=1e-6):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_model_adds_sincos_in_patch_order():
    # depth 0 and zero images: patch_embed gives its bias, so the patch tokens are exactly
    # norm(bias + pos); this checks the embedding is added in the patches' order.
    model = _tiny(depth=0)
    x = jnp.zeros((1, 12, 16, 3))  # a 3x4 grid: non-square
    variables = _variables(model, x)
    cls, tokens = jax.jit(lambda v: model.apply(v, x, train=False, return_tokens=True))(
        variables)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    scale, bias = params["norm"]["scale"], params["norm"]["bias"]
    pos = sincos_2d_position_embedding(3, 4, 32).astype(np.float64)
    ref = _layer_norm(params["patch_embed"]["bias"] + pos) * scale + bias
    np.testing.assert_allclose(tokens[0], ref, atol=1e-4)
    # The class token's position gets zeros.
    ref_cls = _layer_norm(params["cls_token"][0, 0]) * scale + bias
    np.testing.assert_allclose(cls[0], ref_cls, atol=1e-4)


@pytest.mark.parametrize("pos", ["sincos", "learned"])
def test_other_resolutions_with_the_same_params(pos):
    model = _tiny(pos_embedding=pos, depth=1)
    variables = _variables(model, _images())
    if pos == "learned":
        assert variables["params"]["pos_embedding"].shape == (1, 17, 32)
    apply = jax.jit(lambda v, im: model.apply(v, im, train=False, return_tokens=True))
    for shape, num_patches in [((2, 8, 8, 3), 4), ((2, 24, 16, 3), 24)]:
        cls, tokens = apply(variables, _images(shape))
        assert cls.shape == (2, 32) and tokens.shape == (2, num_patches, 32)
        assert np.all(np.isfinite(cls)) and np.all(np.isfinite(tokens))


def test_resize_pos_embedding():
    pos = jax.random.normal(jax.random.key(0), (16, 8))
    assert resize_pos_embedding(pos, (4, 4), (4, 4)) is pos
    # Bicubic weights sum to one: a constant embedding stays constant.
    const = jnp.broadcast_to(jnp.arange(8.0), (16, 8))
    np.testing.assert_allclose(resize_pos_embedding(const, (4, 4), (6, 2)),
                               np.broadcast_to(np.arange(8.0), (12, 8)), atol=1e-5)


def test_gradients_reach_every_parameter():
    model = _tiny(pos_embedding="learned")
    x = _images()
    variables = _variables(model, x)
    # A plain sum of LayerNorm outputs is constant in everything before the final norm
    # when its scale is uniform (as at init), so weight the outputs with random numbers.
    w_cls = jax.random.normal(jax.random.key(1), (2, 32))
    w_tok = jax.random.normal(jax.random.key(2), (2, 16, 32))

    def loss(params):
        cls, tokens = model.apply({"params": params}, x, train=True, return_tokens=True)
        return jnp.sum(cls * w_cls) + jnp.sum(tokens * w_tok)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == 4 + TINY["depth"] * 12 + 2  # patch(2) cls pos; 12 per block; norm
    for path, g in flat:
        assert np.any(np.asarray(g) != 0), jax.tree_util.keystr(path)


def test_cls_token_ignores_patch_order_without_pos_embedding():
    model = _tiny(pos_embedding="none")
    x = _images((1, 16, 16, 3))
    variables = _variables(model, x)
    # Permute the 4x4 grid of 4x4-pixel patches.
    perm = np.random.default_rng(0).permutation(16)
    patches = x.reshape(1, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 16, 4, 4, 3)
    shuffled = patches[:, perm].reshape(1, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5)
    shuffled = shuffled.reshape(1, 16, 16, 3)
    apply = jax.jit(lambda v, im: model.apply(v, im, train=False, return_tokens=True))
    cls, tokens = apply(variables, x)
    cls_s, tokens_s = apply(variables, shuffled)
    np.testing.assert_allclose(cls_s, cls, atol=1e-5)
    np.testing.assert_allclose(tokens_s, tokens[:, perm], atol=1e-5)


def test_initialisation_follows_mocov3():
    model = _tiny(pos_embedding="learned", hidden_dim=64)
    params = _init(model, _images())["params"]
    d = 64

    def bound(a):
        return float(np.max(np.abs(np.asarray(a))))

    # qkv: xavier uniform with the fans of one DxD block (MoCo v3): sqrt(6 / 2D), not the
    # plain fused-kernel sqrt(6 / 4D).
    qkv = params["block1"]["attn"]["qkv"]["kernel"]
    assert qkv.shape == (d, 3 * d)
    assert 0.9 * np.sqrt(6 / (2 * d)) < bound(qkv) <= np.sqrt(6 / (2 * d))
    fc1 = params["block1"]["mlp"]["fc1"]["kernel"]
    assert 0.9 * np.sqrt(6 / (5 * d)) < bound(fc1) <= np.sqrt(6 / (5 * d))
    # Patch projection: xavier over the flattened (p*p*3, D) linear map.
    patch = params["patch_embed"]["kernel"]
    assert patch.shape == (4, 4, 3, d)
    assert 0.9 * np.sqrt(6 / (48 + d)) < bound(patch) <= np.sqrt(6 / (48 + d))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        if name.endswith("['bias']"):
            np.testing.assert_array_equal(leaf, 0, err_msg=name)
        elif name.endswith("['scale']"):
            np.testing.assert_array_equal(leaf, 1, err_msg=name)
    assert bound(params["cls_token"]) < 1e-5  # normal, std 1e-6
    pos = np.asarray(params["pos_embedding"])
    assert 0.0185 < pos.std() < 0.0215  # timm's trunc_normal_(std=0.02): effectively N(0, 0.02²)


def test_bad_input_size_names_patch_size():
    model = _tiny()
    with pytest.raises(ValueError, match="patch_size=4"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 18, 16, 3)),
                                          train=False))


@pytest.mark.parametrize("kwargs,match", [
    ({"pos_embedding": "rope"}, "pos_embedding"),
    ({"hidden_dim": 30, "num_heads": 3}, "divisible by 4"),
    ({"num_heads": 5}, "num_heads"),
])
def test_config_errors(kwargs, match):
    model = _tiny(**kwargs)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                          train=False))


def test_build_vit():
    for name, (hidden, depth, heads) in VIT_VARIANTS.items():
        model = build_vit(name, patch_size=8, dtype=jnp.bfloat16)
        assert (model.hidden_dim, model.depth, model.num_heads) == (hidden, depth, heads)
        assert model.patch_size == 8 and model.feature_dim == hidden
    assert build_vit("vit_small").pos_embedding == "sincos"
    with pytest.raises(ValueError, match="vit_tiny, vit_small, vit_base, vit_large"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match="hidden_dim"):
        build_vit("vit_small", hidden_dim=512)


def test_return_stages_are_the_outputs_of_shallower_models():
    """'block{k}' of the per-layer probes equals the output of a depth-k ViT made of the same
    first k blocks and the same final LayerNorm; 'pooled' is the ordinary output."""
    model = _tiny(depth=8)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    stages = model.apply(variables, x, train=False, return_stages=True)
    assert list(stages) == ["block2", "block4", "block6", "pooled"]
    np.testing.assert_array_equal(stages["pooled"], model.apply(variables, x, train=False))
    for k in (2, 4, 6):
        shallow = _tiny(depth=k)
        params = {n: p for n, p in variables["params"].items()
                  if not n.startswith("block") or int(n[5:]) <= k}
        np.testing.assert_allclose(stages[f"block{k}"], shallow.apply({"params": params}, x, train=False),
                                   rtol=1e-5, atol=1e-6)


def test_drop_path_zeroes_whole_examples_and_keeps_the_expectation():
    from ssl_jax.models.vit import drop_path

    branch = jnp.ones((4000, 3, 2))
    out = np.asarray(drop_path(branch, 0.25, jax.random.PRNGKey(0)))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # all or nothing per example
    assert abs(np.mean(per_example[:, 0] > 0) - 0.75) < 0.03
    np.testing.assert_array_equal(out, drop_path(branch, 0.25, jax.random.PRNGKey(0)))


def test_stochastic_depth_only_in_training_with_an_rng():
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
    plain = _tiny(depth=4)
    variables = plain.init(jax.random.PRNGKey(0), x, train=False)
    ref = plain.apply(variables, x, train=True)
    dropping = _tiny(depth=4, drop_path_rate=0.5)
    np.testing.assert_array_equal(dropping.apply(variables, x, train=False), ref)
    np.testing.assert_array_equal(dropping.apply(variables, x, train=True), ref)  # no rng: the teacher
    rngs = lambda k: {"drop_path": jax.random.PRNGKey(k)}
    a = dropping.apply(variables, x, train=True, rngs=rngs(2))
    assert np.abs(np.asarray(a) - np.asarray(ref)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(dropping.apply(variables, x, train=True, rngs=rngs(3)))).max() > 1e-3
    rematted = _tiny(depth=4, drop_path_rate=0.5, remat=True).apply(variables, x, train=True, rngs=rngs(2))
    np.testing.assert_allclose(rematted, a, rtol=1e-6, atol=1e-6)
