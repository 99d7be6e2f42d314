"""Encoders and heads; `build_encoder` makes any backbone from `config.model`.

Backbones: ResNet-18..200 (models.resnet), ViT-Tiny..Large (models.vit), AlexNet-BN, the
DeepCluster / SeLa backbone (models.alexnet), and VGG-16-BN, the DeeperCluster backbone
(models.vgg), and RotNet's 4-block Network-in-Network, the SSL++ CIFAR backbone (models.nin).
The CNNs (ResNet, AlexNet, VGG, NIN) take DeepCluster's optional fixed grayscale +
Sobel input layer (``config.model.sobel``, models.sobel); the ViT does not. Each is a
flax.linen Module called as ``apply(variables, x, train=..., return_stages=..., bn_views=...)``
with a ``feature_dim`` property; each reads its own fields of config.model (RESNET_FIELDS,
VIT_FIELDS, ALEXNET_FIELDS, VGG_FIELDS, NIN_FIELDS)."""
from typing import Any

from ssl_jax.models.alexnet import ALEXNET_NAMES, AlexNet, build_alexnet
from ssl_jax.models.heads import DINOHead, MLPHead, Prototypes, build_head, normalize_prototypes
from ssl_jax.models.nin import NIN, NIN_NAMES, build_nin
from ssl_jax.models.resnet import RESNET_NAMES, BasicBlock, Bottleneck, ResNet, build_resnet, model_dtype
from ssl_jax.models.sobel import sobel_filter
from ssl_jax.models.vgg import VGG16, VGG_NAMES, build_vgg
from ssl_jax.models.vit import VIT_VARIANTS, VisionTransformer, build_vit

ENCODER_NAMES = RESNET_NAMES + tuple(VIT_VARIANTS) + ALEXNET_NAMES + VGG_NAMES + NIN_NAMES


# The fields of config.model each backbone reads (defaults: ssl_jax.presets.base_config).
RESNET_FIELDS = ("width", "cifar_stem", "sobel", "zero_init_residual", "dtype", "remat", "conv_backend")
VIT_FIELDS = ("patch_size", "pos_embedding", "dtype", "remat", "drop_path_rate")
ALEXNET_FIELDS = ("width", "cifar_stem", "sobel", "dropout", "dtype", "remat")
VGG_FIELDS = ("width", "cifar_stem", "sobel", "dropout", "dtype", "remat")
NIN_FIELDS = ("width", "sobel", "dtype", "remat", "conv_backend")


def build_encoder(model_cfg: Any):
    """A ResNet (name 'resnet10', 'resnet18' ... 'resnet200'; fields RESNET_FIELDS), a ViT (name
    'vit_tiny' ... 'vit_large'; fields VIT_FIELDS), AlexNet-BN (name 'alexnet'; fields
    ALEXNET_FIELDS), VGG-16-BN (name 'vgg16'; fields VGG_FIELDS) or RotNet's NIN (name 'nin';
    fields NIN_FIELDS) from a complete
    `config.model` (a dict or ConfigDict). Every field is read as given: the defaults are
    ssl_jax.presets.base_config's, and a partial config (an older config.json, an export's
    metadata) is completed against it once, where it is loaded."""
    _check_fields(model_cfg, ("name",), "build_encoder")
    name = model_cfg["name"]
    if name in ALEXNET_NAMES:
        _check_fields(model_cfg, ALEXNET_FIELDS, f"a {name}")
        return build_alexnet(model_cfg)
    if name in VGG_NAMES:
        _check_fields(model_cfg, VGG_FIELDS, f"a {name}")
        return build_vgg(model_cfg)
    if name in NIN_NAMES:
        _check_fields(model_cfg, NIN_FIELDS, f"a {name}")
        return build_nin(model_cfg)
    if name in VIT_VARIANTS:
        if model_cfg.get("sobel", False):
            # The ViT has no Sobel layer; it would silently train on RGB.
            raise ValueError("config.model.sobel=True applies to the CNN backbones only (resnet*, "
                             f"alexnet, vgg16, nin), not the ViT {name!r}; set --config.model.sobel=False "
                             "or choose a CNN with --config.model.name.")
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


__all__ = ["ENCODER_NAMES", "RESNET_FIELDS", "VIT_FIELDS", "ALEXNET_FIELDS", "VGG_FIELDS", "NIN_FIELDS", "AlexNet",
           "BasicBlock", "Bottleneck", "DINOHead", "MLPHead", "Prototypes", "normalize_prototypes",
           "NIN", "ResNet", "VGG16", "VisionTransformer", "build_encoder", "build_head", "sobel_filter"]
