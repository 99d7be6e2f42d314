"""Encoders and heads; `build_encoder` makes any backbone from `config.model`."""
from typing import Any

from ssl_jax.models.heads import DINOHead, MLPHead, Prototypes, build_head, normalize_prototypes
from ssl_jax.models.resnet import RESNET_NAMES, BasicBlock, Bottleneck, ResNet, build_resnet, model_dtype
from ssl_jax.models.vit import VIT_VARIANTS, VisionTransformer, build_vit

ENCODER_NAMES = RESNET_NAMES + tuple(VIT_VARIANTS)


def build_encoder(model_cfg: Any):
    """A ResNet (name 'resnet18' ... 'resnet200'; keys width, cifar_stem, dtype,
    zero_init_residual, remat) or a ViT (name 'vit_tiny' ... 'vit_large'; keys patch_size
    (default 16), pos_embedding ('sincos' | 'learned', default 'sincos'), dtype, remat,
    drop_path_rate (default 0))."""
    get = model_cfg.get if hasattr(model_cfg, "get") else lambda k, d=None: getattr(model_cfg, k, d)
    name = get("name", None)
    if name in VIT_VARIANTS:
        return build_vit(name, patch_size=int(get("patch_size", 16)),
                         pos_embedding=get("pos_embedding", "sincos"), dtype=model_dtype(model_cfg),
                         remat=bool(get("remat", False)), drop_path_rate=float(get("drop_path_rate", 0.0)))
    if name in RESNET_NAMES:
        return build_resnet(model_cfg)
    raise ValueError(f"Unknown encoder name {name!r} in model config; valid names: "
                     f"{', '.join(ENCODER_NAMES)}.")


__all__ = ["ENCODER_NAMES", "BasicBlock", "Bottleneck", "DINOHead", "MLPHead", "Prototypes", "normalize_prototypes", "ResNet", "VisionTransformer",
           "build_encoder", "build_head"]
