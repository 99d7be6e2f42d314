"""Pure loss functions of arrays (the loss contract of ../shared/DESIGN.md)."""
from ssl_jax.losses.contrastive import info_nce, nt_xent
from ssl_jax.losses.directional import directional, neg_cosine
from ssl_jax.losses.prototypes import carl, carp, carp_permutation, dino, sinkhorn, swav
from ssl_jax.losses.redundancy import barlow_twins, vicreg, whiten, wmse
from ssl_jax.losses.regression import byol, cosine_similarity, l2_normalize, simsiam

__all__ = ["byol", "simsiam", "cosine_similarity", "l2_normalize", "nt_xent", "info_nce",
           "barlow_twins", "vicreg", "whiten", "wmse", "sinkhorn", "swav", "dino", "carl", "carp",
           "carp_permutation", "directional", "neg_cosine"]
