"""Entry point: python -m ssl_jax.main --config=configs/byol.py[:PRESET] --workdir=DIR.

Every config field can be overridden from the command line, e.g.
--config.optimizer.base_lr=0.3 --config.global_batch_size=512.
"""
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax.cli import fail

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/byol.py:cifar10.",
                                          lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results "
                               "(a rerun of the same command resumes from it).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the coordinator, "
                                "process count and id read from the cluster (Cloud TPU pod slices, SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for a multi-process "
                                   "run without cluster detection (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of an explicit multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in an explicit multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _load_config(spec: str):
    """The config of a --config=path.py[:preset] value, loaded the way config_flags loads it."""
    path, _, preset = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_ssl_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def _unknown_override(argv) -> str | None:
    """The first --config.a.b=... override whose path is not a field of the config."""
    try:
        config = _load_config(argv_config(argv))
    except Exception:  # the config itself is broken: flag parsing reports that
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, path = config, arg[len("--config."):].split("=", 1)[0]
        for key in path.split("."):
            if not hasattr(node, "keys") or key not in node.keys():
                return path
            node = node[key]
    return None


def parse_flags(argv):
    """absl flag parsing; a bad flag or an unknown config field is one message, no traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if "Traceback" in message:  # an error raised by the config file itself: keep its last line
            message = f"{argv_config(argv)}: " + message.strip().splitlines()[-1]
        fail(f"{message}\nPass --helpshort for the flags.", code=2)
    except (AttributeError, KeyError) as e:
        path = _unknown_override(argv)
        fail(f"unknown config field {path or e!s} in the command line: it is not a field of "
              f"{argv_config(argv)}. Check the spelling (the config file lists the fields).", code=2)


def argv_config(argv) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "the config")


def quiet_library_logs():
    """Library INFO logs (orbax writes several lines per checkpoint) would drown the progress
    line; pass --verbosity=0 to see them."""
    if flags.FLAGS["verbosity"].value == 0 and "--verbosity" not in " ".join(sys.argv):
        logging.set_verbosity(logging.WARNING)


def initialize_distributed():
    """jax.distributed.initialize() as the multi-process flags ask (nothing for one process)."""
    from ssl_jax import parallel
    parallel.initialize_distributed(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    from ssl_jax.train import loop, preemption  # after flag parsing: importing JAX/TF is slow
    try:
        initialize_distributed()
        loop.run(CONFIG.value, WORKDIR.value)
    except preemption.Preempted as e:
        # A checkpoint of the last step is written: rerunning the same command resumes.
        print(f"ssl_jax: {e}", file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except (ValueError, FileNotFoundError, loop.NonFiniteLossError) as e:
        # Errors a user can cause: one message naming the cause and the fix, no traceback.
        fail(str(e))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=parse_flags)
