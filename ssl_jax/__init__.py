"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

The Python API (README, "Use from Python"); each name is imported on first use, so
`import ssl_jax` is quick and changes nothing in the process (no environment variable, no JAX
backend):

  config(name, preset)        a config of configs/ by name: config("byol", "demo")
  config_names()              the names config() accepts
  build(config, num_steps)    the method, optimizer, initial state and compiled train step
  batches(training, images)   the method's augmented batches from your NumPy images
  pretrained_of(training, state)  the trained encoder as a Pretrained
  load_pretrained(source)     an encoder from a run's workdir or an exported .msgpack
  save_pretrained(path, pre)  write it as a Flax export (load_pretrained reads it back)
  losses                      the pure loss functions (ssl_jax.losses)

The package is in layers; a module imports only from its own layer or below
(tests/test_layout.py checks it):

  pure array code   losses (the loss contract), monitors, schedules, native, xla_flags
  models, data      models, data, parallel (the mesh and sharding rules), presets (the base
                    config: the one source of defaults), results
  methods           methods (one module per method; dssl wraps a method's pair objective)
  training engine   train (loop, resumable step loop, step, optim, checkpoint)
  evaluation        evaluate, pretrained, export, report, cli, api
  entry points      main (python -m ssl_jax.main), evaluate/__main__
"""
import importlib

# name -> (module, attribute or None for the module itself)
_API = {
    "config": ("ssl_jax.api", "config"),
    "config_names": ("ssl_jax.api", "config_names"),
    "build": ("ssl_jax.api", "build"),
    "batches": ("ssl_jax.api", "batches"),
    "pretrained_of": ("ssl_jax.api", "pretrained_of"),
    "Training": ("ssl_jax.api", "Training"),
    "load_pretrained": ("ssl_jax.pretrained", "load"),
    "save_pretrained": ("ssl_jax.pretrained", "save_flax"),
    "losses": ("ssl_jax.losses", None),
}
__all__ = sorted(_API)


def __getattr__(name):
    # Lazy (PEP 562): the command-line entry points import this package first and must be able
    # to set XLA_FLAGS and parse flags before JAX, TensorFlow and the models are imported.
    if name not in _API:
        raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")
    module, attr = _API[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__():
    return sorted(set(globals()) | set(_API))
