"""Self-supervised methods; `build_method` picks one by `config.method`.

Every module of this package is imported here and each `JointEmbeddingMethod` subclass it
defines with a `name` is registered under that name in METHODS. Adding a method takes:

  1. ssl_jax/methods/<name>.py: a subclass of JointEmbeddingMethod (ssl_jax/methods/base.py,
     whose docstring lists what a method sets) with `name = "<name>"` and its `objective`;
  2. its loss as a pure function in ssl_jax/losses (the contract in that package's docstring);
  3. configs/<name>.py: get_config(preset) from ssl_jax.presets.base_config("<name>"), with a
     complete `<name>` section (every key the method reads, base.py's included).

Nothing in the training engine changes. To make a two-view method available to DSSL's
four-view modes, give it a row in ssl_jax.methods.dssl.PAIRWISE.
"""
import importlib
import pkgutil

import ml_collections

from ssl_jax.methods import dssl, ensemble, sslpp
from ssl_jax.methods.base import JointEmbeddingMethod


def _registered() -> dict:
    """name -> class of every named JointEmbeddingMethod subclass defined in this package."""
    methods = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, JointEmbeddingMethod) and obj.name
                    and obj.__module__ == module.__name__):
                if obj.name in methods:
                    raise TypeError(f"Two methods are named {obj.name!r}: {methods[obj.name]} and {obj}.")
                methods[obj.name] = obj
    return methods


METHODS = _registered()


def build_method(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int | None = None):
    """The method object named by config.method, wrapped as config.dssl asks (ssl_jax.methods.dssl),
    with SSL++'s semantic head where config.sslpp.labels is set (ssl_jax.methods.sslpp), and as an
    ensemble of config.ensemble.size blocks where it is > 1 (ssl_jax.methods.ensemble)
    (steps_per_epoch: for epoch-based settings; default total_steps / num_epochs)."""
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; known methods: {sorted(METHODS)}. "
                         "Use one of the configs in configs/.")
    method = sslpp.wrap(dssl.wrap(METHODS[config.method](config, total_steps, steps_per_epoch), config.dssl),
                        config)
    return ensemble.wrap(method, config)
