"""Self-supervised methods; `build_method` picks one by `config.method`."""
import ml_collections

from ssl_jax.methods.byol import BYOL

METHODS = {"byol": BYOL}


def build_method(config: ml_collections.ConfigDict, total_steps: int):
    """The method object named by config.method."""
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; known methods: {sorted(METHODS)}. "
                         "Use one of the configs in configs/.")
    return METHODS[config.method](config, total_steps)
