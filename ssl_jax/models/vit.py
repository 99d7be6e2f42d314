"""Vision Transformer encoder in flax.linen, NHWC, as used by MoCo v3 and DINO.

Layout follows the original ViT (Dosovitskiy et al., 2021) as configured by MoCo v3
(Chen, Xie & He, 2021) and DINO (Caron et al., 2021): a patch embedding (a conv with
kernel = stride = patch size), a learned class token, a position embedding, ``depth``
pre-norm Transformer blocks and a final LayerNorm; the encoder returns the class token.
Without a classifier the parameter counts equal timm's ``num_classes=0`` models
(ViT-S/16: 21,665,664 with a learned position embedding).

Parameter names: ``patch_embed`` (kernel, bias), ``cls_token``, ``pos_embedding`` (only
when learned), ``block{i}`` (i = 1..depth) with ``norm1``, ``attn`` (``qkv``, ``proj``),
``norm2``, ``mlp`` (``fc1``, ``fc2``), and ``norm``. ``patch_embed`` is a top-level name
so an optimizer mask can freeze it (MoCo v3 trains with a frozen random patch
projection).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_NORM_EPS = 1e-6
POS_EMBEDDINGS = ("sincos", "learned", "none")

# Xavier / Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
xavier_uniform = nn.initializers.xavier_uniform()

# The patch projection as a linear map of the flattened (p * p * 3) patch, as MoCo v3
# initialises it. Flax's default conv fans would multiply *both* fans by p * p.
patch_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)

# DINO / timm: trunc_normal_(std=0.02), whose bounds are +-2 in absolute value, i.e.
# +-100 std: in effect N(0, 0.02²). (jax's default bounds are +-2 *std* without a variance
# correction, which would give std 0.0176.)
pos_embedding_init = nn.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)


def qkv_kernel_init(key, shape, dtype=jnp.float32):
    """Xavier uniform for the fused [D, 3·D] qkv kernel with the fans of one D×D block.

    MoCo v3's ViT init treats q, k and v as separate layers (bound sqrt(6 / (D + D)))
    rather than one D -> 3·D layer (plain xavier: sqrt(6 / (D + 3·D))), so the fused
    kernel is initialised as three independent xavier-uniform D×D blocks.
    """
    d_in, d_out3 = shape
    if d_out3 % 3:
        raise ValueError(f"qkv kernel shape {shape}: output size must be a multiple of 3.")
    blocks = nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=0, out_axis=-1, batch_axis=1)(
            key, (d_in, 3, d_out3 // 3), dtype)
    return blocks.reshape(shape)


def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int,
                                 temperature: float = 10000.0) -> np.ndarray:
    """MoCo v3's fixed 2-D sine-cosine position embedding, [grid_h * grid_w, dim] float32.

    Tokens are in row-major order (token index = row * grid_w + col, the order of the
    flattened patch embedding). With omega_k = 1 / temperature**(k / (dim/4)),
    k = 0..dim/4-1, the embedding of the patch at (row, col) is

        [sin(row·omega), cos(row·omega), sin(col·omega), cos(col·omega)].

    Order: MoCo v3's ``build_2d_sincos_position_embedding`` concatenates
    [sin(w·ω), cos(w·ω), sin(h·ω), cos(h·ω)] with ``grid_w, grid_h =
    torch.meshgrid(arange(w), arange(h))`` ('ij' indexing) flattened row-major, so the
    token at sequence index m gets "w" = m // h and "h" = m % h. On a square grid that
    is w = row, h = col: the first half encodes the row. This function reproduces
    those values exactly on square grids and, unlike the reference, stays spatially
    meaningful on non-square grids (row and col are always the patch's coordinates).
    """
    if dim % 4:
        raise ValueError(f"The 2-D sin-cos position embedding needs hidden_dim divisible "
                         f"by 4, got {dim}; use pos_embedding='learned' or change hidden_dim.")
    quarter = dim // 4
    omega = 1.0 / (temperature ** (np.arange(quarter, dtype=np.float64) / quarter))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing="ij")
    out_r = rows.reshape(-1, 1) * omega[None]
    out_c = cols.reshape(-1, 1) * omega[None]
    emb = np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], 1)
    return emb.astype(np.float32)


def resize_pos_embedding(pos: jax.Array, old_grid: tuple[int, int],
                         new_grid: tuple[int, int]) -> jax.Array:
    """Bicubically resizes patch position embeddings [old_h*old_w, D] to [new_h*new_w, D].

    As DINO's ``interpolate_pos_encoding`` (used for its 96 px local crops), without
    anti-aliasing (PyTorch's bicubic ``interpolate`` has none); jax.image's cubic kernel
    uses a = -0.5 where PyTorch uses a = -0.75, so values differ slightly from DINO's.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    dim = pos.shape[-1]
    grid = pos.reshape(*old_grid, dim).astype(jnp.float32)
    grid = jax.image.resize(grid, (*new_grid, dim), method="bicubic", antialias=False)
    return grid.reshape(new_grid[0] * new_grid[1], dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Dense and an output ``proj`` Dense.

    Written out rather than nn.MultiHeadDotProductAttention: the fused [D, 3·D] qkv
    kernel and [D, D] proj kernel are timm / MoCo v3 / DINO's ``qkv`` and ``proj``
    weights transposed (q, k, v along the output axis, heads within each), one matmul
    computes q, k and v, and the attention logits and softmax are explicitly float32
    whatever the compute dtype.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, length, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=qkv_kernel_init,
                       bias_init=nn.initializers.zeros, name="qkv")(x)
        qkv = qkv.reshape(n, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * head_dim ** -0.5, axis=-1).astype(self.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, dim)
        return nn.Dense(dim, dtype=self.dtype, kernel_init=xavier_uniform,
                        bias_init=nn.initializers.zeros, name="proj")(out)


class Mlp(nn.Module):
    """Dense(hidden) -> GELU (exact, erf form, as PyTorch's nn.GELU in timm/MoCo v3/DINO)
    -> Dense(dim)."""

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        dense = lambda features, name: nn.Dense(
            features, dtype=self.dtype, kernel_init=xavier_uniform,
            bias_init=nn.initializers.zeros, name=name)
        x = nn.gelu(dense(self.hidden_dim, "fc1")(x), approximate=False)
        return dense(dim, "fc2")(x)


DROP_PATH_RNG = "drop_path"  # the rng collection stochastic depth draws from


def drop_path(branch: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016; timm's DropPath): each example's residual branch
    [N, ...] is zeroed with probability `rate`, else scaled by 1 / (1 - rate), so its
    expectation is unchanged."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (branch.shape[0],) + (1,) * (branch.ndim - 1))
    return jnp.where(mask, branch / keep, jnp.zeros((), branch.dtype)).astype(branch.dtype)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); with
    `drop_path` > 0, each branch is dropped per example in training when a 'drop_path' rng is
    given (the student; DINO's teacher and every evaluation run without it)."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    layer_norm_eps: float = LAYER_NORM_EPS
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                                         name=name)
        active = train and self.drop_path > 0.0 and self.has_rng(DROP_PATH_RNG)
        branch = lambda y: drop_path(y, self.drop_path, self.make_rng(DROP_PATH_RNG)) if active else y
        x = x + branch(SelfAttention(self.num_heads, self.dtype, name="attn")(norm("norm1")(x)))
        return x + branch(Mlp(self.mlp_dim, self.dtype, name="mlp")(norm("norm2")(x)))


class VisionTransformer(nn.Module):
    """ViT encoder returning the class token after the final LayerNorm.

    Attributes:
      patch_size: side of the square patches (conv kernel = stride).
      hidden_dim: token width D (the feature size).
      depth: number of Transformer blocks.
      num_heads: attention heads (must divide hidden_dim).
      mlp_ratio: MLP hidden width = int(hidden_dim * mlp_ratio).
      pos_embedding: 'sincos' (MoCo v3: fixed 2-D sine-cosine, not a parameter,
        computed for the actual patch grid; the class token's position gets zeros),
        'learned' (DINO: a parameter [1, 1 + grid², D] for ``image_size``, truncated
        normal std 0.02, bicubically resized to other grids) or 'none'.
      image_size: the resolution the learned position embedding is made for.
      cls_init_std: std of the normal init of the class token. Default 1e-6, as MoCo v3
        (the class token starts almost at zero and is learned from there); DINO/timm
        use a truncated normal with std 0.02 — pass 0.02 to follow them.
      dtype: compute dtype (params are always float32; softmax in float32; outputs
        float32).
      layer_norm_eps: LayerNorm epsilon (1e-6 as timm's ViT, MoCo v3 and DINO).
      remat: recompute each block's activations in the backward pass (nn.remat per block):
        less activation memory for ~1/3 more compute; params and results unchanged.

      drop_path_rate: stochastic depth, rising linearly over the blocks from 0 to this rate
        (timm; DINO trains its ViT-S/B with 0.1, MoCo v3 with none). Active only with
        ``train=True`` and a 'drop_path' rng (``rngs={'drop_path': key}``).

    There is no dropout or BatchNorm (MoCo v3 and DINO's ViT pre-training use none), so there
    are no ``batch_stats``, and ``train`` only switches stochastic depth.
    """

    patch_size: int = 16
    hidden_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    pos_embedding: str = "sincos"
    image_size: int = 224
    cls_init_std: float = 1e-6
    dtype: Any = jnp.float32
    layer_norm_eps: float = LAYER_NORM_EPS
    remat: bool = False
    drop_path_rate: float = 0.0

    @property
    def feature_dim(self) -> int:
        """Size D of the output features (the class token)."""
        return self.hidden_dim

    def _check_config(self):
        if self.pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"Unknown pos_embedding {self.pos_embedding!r}; "
                             f"valid: {', '.join(POS_EMBEDDINGS)}.")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} is not divisible by "
                             f"num_heads={self.num_heads}.")
        if self.pos_embedding == "learned" and self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size} (needed for the learned "
                             f"position embedding's grid).")

    @nn.compact
    def __call__(self, x, train: bool, return_tokens: bool = False, return_stages: bool = False,
                 bn_views: int = 1):
        """x: images [N, H, W, C] with H and W multiples of ``patch_size``.

        Returns the class token [N, D] (float32), or with ``return_tokens`` a pair
        (class token [N, D], patch tokens [N, (H/p)·(W/p), D]), both after the final
        LayerNorm, patch tokens in row-major order. With ``return_stages`` (the per-layer
        probes) a dict: 'block{k}' the class token after block k for k at 1/4, 1/2 and 3/4 of
        the depth, each through the final LayerNorm (as DINO's features of intermediate
        blocks), and 'pooled' the output.
        """
        del bn_views  # no BatchNorm: the views of a batch need no separate statistics
        self._check_config()
        if x.ndim != 4:
            raise ValueError(f"VisionTransformer expects images [N, H, W, C], got shape "
                             f"{tuple(x.shape)}.")
        _, height, width, _ = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the ViT "
                             f"patch_size={p}; resize or crop the input to multiples of {p}.")
        grid = (height // p, width // p)

        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID",
                    dtype=self.dtype, kernel_init=patch_kernel_init,
                    bias_init=nn.initializers.zeros, name="patch_embed")(x)
        n = x.shape[0]
        x = x.reshape(n, grid[0] * grid[1], self.hidden_dim)

        cls = self.param("cls_token", nn.initializers.normal(self.cls_init_std),
                         (1, 1, self.hidden_dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.hidden_dim)),
                             x], axis=1)

        if self.pos_embedding != "none":
            if self.pos_embedding == "sincos":
                patch_pos = jnp.asarray(sincos_2d_position_embedding(*grid, self.hidden_dim))
                cls_pos = jnp.zeros((1, self.hidden_dim), jnp.float32)
            else:
                base = self.image_size // p
                pos = self.param("pos_embedding", pos_embedding_init,
                                 (1, 1 + base * base, self.hidden_dim), jnp.float32)[0]
                cls_pos = pos[:1]
                patch_pos = resize_pos_embedding(pos[1:], (base, base), grid)
            x = x + jnp.concatenate([cls_pos, patch_pos], axis=0)[None].astype(self.dtype)

        mlp_dim = int(self.hidden_dim * self.mlp_ratio)
        # `train` is static under remat (argument 2, counting self).
        block_cls = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")
        probed = {self.depth * q // 4 for q in (1, 2, 3)} - {0, self.depth}
        stages = {}
        for i in range(self.depth):
            rate = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = block_cls(self.num_heads, mlp_dim, self.dtype, self.layer_norm_eps, rate,
                          name=f"block{i + 1}")(x, train)
            if return_stages and i + 1 in probed:
                stages[f"block{i + 1}"] = norm(x[:, 0]).astype(jnp.float32)
        x = norm(x).astype(jnp.float32)
        if return_stages:
            return dict(stages, pooled=x[:, 0])
        if return_tokens:
            return x[:, 0], x[:, 1:]
        return x[:, 0]


# (hidden_dim, depth, num_heads); MLP ratio 4 throughout.
VIT_VARIANTS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


def build_vit(name: str, patch_size: int = 16, **kwargs) -> VisionTransformer:
    """A VisionTransformer of a named size ('vit_tiny', 'vit_small', 'vit_base',
    'vit_large'); ``kwargs`` set the other fields (pos_embedding, image_size, dtype, ...)."""
    if name not in VIT_VARIANTS:
        raise ValueError(f"Unknown ViT name {name!r}; valid names: "
                         f"{', '.join(VIT_VARIANTS)}.")
    fixed = {"hidden_dim", "depth", "num_heads"} & set(kwargs)
    if fixed:
        raise ValueError(f"build_vit({name!r}) sets {sorted(fixed)} from the variant; "
                         f"construct VisionTransformer directly for a custom size.")
    hidden_dim, depth, num_heads = VIT_VARIANTS[name]
    return VisionTransformer(patch_size=patch_size, hidden_dim=hidden_dim, depth=depth,
                             num_heads=num_heads, **kwargs)
