"""Encoders and heads."""
from ssl_jax.models.heads import MLPHead, build_head
from ssl_jax.models.resnet import (
    ENCODER_NAMES,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_encoder,
)

__all__ = ["ENCODER_NAMES", "BasicBlock", "Bottleneck", "MLPHead", "ResNet", "build_encoder", "build_head"]
