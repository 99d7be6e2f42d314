"""Encoders and heads; `build_encoder` makes any backbone from `config.model`."""
from typing import Any

from ssl_jax.models.heads import DINOHead, MLPHead, Prototypes, build_head, normalize_prototypes
from ssl_jax.models.resnet import RESNET_NAMES, BasicBlock, Bottleneck, ResNet, build_resnet, model_dtype
from ssl_jax.models.vit import VIT_VARIANTS, VisionTransformer, build_vit

ENCODER_NAMES = RESNET_NAMES + tuple(VIT_VARIANTS)


# The fields of config.model each backbone reads (defaults: ssl_jax.presets.base_config).
RESNET_FIELDS = ("width", "cifar_stem", "zero_init_residual", "dtype", "remat", "conv_backend")
VIT_FIELDS = ("patch_size", "pos_embedding", "dtype", "remat", "drop_path_rate")


def build_encoder(model_cfg: Any):
    """A ResNet (name 'resnet18' ... 'resnet200'; fields RESNET_FIELDS) or a ViT (name
    'vit_tiny' ... 'vit_large'; fields VIT_FIELDS) from a complete `config.model` (a dict or
    ConfigDict). Every field is read as given: the defaults are ssl_jax.presets.base_config's, and
    a partial config (an older config.json, an export's metadata) is completed against it once,
    where it is loaded."""
    _check_fields(model_cfg, ("name",), "build_encoder")
    name = model_cfg["name"]
    if name in VIT_VARIANTS:
        _check_fields(model_cfg, VIT_FIELDS, f"a {name}")
        return build_vit(name, patch_size=int(model_cfg["patch_size"]),
                         pos_embedding=model_cfg["pos_embedding"], dtype=model_dtype(model_cfg),
                         remat=bool(model_cfg["remat"]), drop_path_rate=float(model_cfg["drop_path_rate"]))
    if name in RESNET_NAMES:
        _check_fields(model_cfg, RESNET_FIELDS, f"a {name}")
        return build_resnet(model_cfg)
    raise ValueError(f"Unknown encoder name {name!r} in model config; valid names: "
                     f"{', '.join(ENCODER_NAMES)}.")


def _check_fields(model_cfg: Any, fields: tuple, reader: str) -> None:
    missing = [k for k in fields if k not in model_cfg]
    if missing:
        raise ValueError(f"config.model lacks the field(s) {', '.join(map(repr, missing))} ({reader} reads "
                         f"{', '.join(fields)}); set --config.model.{missing[0]}=..., or start the "
                         "config from ssl_jax.presets.base_config (a partial one, e.g. an older "
                         "config.json: ssl_jax.presets.complete_config).")


__all__ = ["ENCODER_NAMES", "RESNET_FIELDS", "VIT_FIELDS", "BasicBlock", "Bottleneck", "DINOHead", "MLPHead",
           "Prototypes", "normalize_prototypes", "ResNet", "VisionTransformer", "build_encoder", "build_head"]
