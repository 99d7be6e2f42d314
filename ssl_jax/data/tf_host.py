"""TensorFlow as this library uses it: tf.data on the host CPU, nothing else.

Every module of ssl_jax.data takes `tf` from here, so the first import of TensorFlow in a
process is this one, which does two things once:

* TF never takes an accelerator: JAX owns the GPUs/TPUs of the host.
* TF's own eager import of Keras is skipped. `import tensorflow` loads keras.src.optimizers
  (and through Keras, scikit-learn's estimator machinery) only to register Keras optimizers
  for SavedModel loading, inside a try/except ImportError; ssl_jax uses no Keras. Skipping it
  saves 1.5-2 s of CPU at every start of a command (measured: `import tensorflow` 6.0-6.6 s
  user -> 4.3-5.0 s on the 2-core machine). Keras stays importable afterwards: only the
  duration of TF's import sees the module as missing, and `tf.keras` is still TF's lazy loader.
"""
import sys

_KERAS_EAGER_IMPORT = "keras.src.optimizers"

if "tensorflow" not in sys.modules and _KERAS_EAGER_IMPORT not in sys.modules:
    sys.modules[_KERAS_EAGER_IMPORT] = None  # makes TF's try-import raise ImportError
    try:
        import tensorflow  # noqa: F401
    finally:
        del sys.modules[_KERAS_EAGER_IMPORT]

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # devices already initialised, or no GPU support
    pass

__all__ = ["tf"]
