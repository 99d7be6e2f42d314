"""Entry point: python -m ssl_jax.main --config=configs/byol.py[:PRESET] --workdir=DIR.

Every config field can be overridden from the command line, e.g.
--config.optimizer.base_lr=0.3 --config.global_batch_size=512.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/byol.py:cifar10.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results "
                               "(a rerun of the same command resumes from it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from ssl_jax.train import loop  # after flag parsing: importing JAX/TF is slow
    try:
        loop.run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, loop.NonFiniteLossError) as e:
        # Errors a user can cause: one message naming the cause and the fix, no traceback.
        print(f"ssl_jax: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
