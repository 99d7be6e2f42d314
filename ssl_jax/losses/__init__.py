"""Pure loss functions of arrays (the loss contract of ../shared/DESIGN.md)."""
from ssl_jax.losses.regression import byol, cosine_similarity, l2_normalize, simsiam

__all__ = ["byol", "simsiam", "cosine_similarity", "l2_normalize"]
