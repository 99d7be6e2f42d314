"""Self-supervised methods; `build_method` picks one by `config.method`."""
import ml_collections

from ssl_jax.methods.barlow_twins import BarlowTwins
from ssl_jax.methods.byol import BYOL
from ssl_jax.methods.carl import CARL, CARP
from ssl_jax.methods.dino import DINO
from ssl_jax.methods.moco import MoCoV2, MoCoV3
from ssl_jax.methods.simclr import SimCLR
from ssl_jax.methods.simsiam import SimSiam
from ssl_jax.methods.swav import SwAV
from ssl_jax.methods.vicreg import VICReg
from ssl_jax.methods.wmse import WMSE

METHODS = {m.name: m for m in (BYOL, SimCLR, MoCoV2, MoCoV3, SimSiam, BarlowTwins, VICReg, WMSE, SwAV, DINO, CARL, CARP)}


def build_method(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int | None = None):
    """The method object named by config.method (steps_per_epoch: for epoch-based settings;
    default total_steps / num_epochs)."""
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; known methods: {sorted(METHODS)}. "
                         "Use one of the configs in configs/.")
    return METHODS[config.method](config, total_steps, steps_per_epoch)
