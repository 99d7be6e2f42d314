"""What every command line of ssl_jax shares, in one place: the run flags (--config, --workdir,
the multi-process ones), absl flag parsing with one-line errors, quiet library logs, the
distributed start-up and the wrapper that turns a user's error into one message.

An entry point is a few lines (see ssl_jax/main.py):

    FLAGS = cli.define_run_flags("configs/byol.py:cifar10")
    if __name__ == "__main__":
        cli.run(lambda config, workdir: ..., FLAGS, name="ssl_jax")

JAX, TensorFlow and the rest of ssl_jax are imported only after the flags parsed, so --help
and a bad flag answer at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import os
import sys
from typing import Callable

from absl import app, flags, logging

from ssl_jax import xla_flags

# Errors a user can cause (a bad config value, a missing dataset or checkpoint, a file in the
# way, a diverging loss, a path this user cannot write): one message naming the cause and the
# fix, no traceback. OSError covers permissions, read-only or full disks and files in the way.
USER_ERRORS = (ValueError, OSError, FloatingPointError)

# The fix of an OS error that reached the handler without a message of ssl_jax's own.
_OS_FIXES = {
    errno.EACCES: "make it accessible to this user or pass another path",
    errno.EPERM: "make it accessible to this user or pass another path",
    errno.EROFS: "the filesystem is read-only: pass a --workdir on a writable one",
    errno.ENOSPC: "the disk is full: free space and rerun (checkpoints already written are whole)",
    errno.EDQUOT: "the disk quota is exhausted: free space and rerun (checkpoints already written are whole)",
    errno.ENOTDIR: "a file is in the way where a directory is needed: move it or pass another path",
    errno.EEXIST: "a file is in the way: move it or pass another path",
    errno.EISDIR: "a directory is in the way where a file is needed: pass a file path",
    errno.ENOENT: "check the path (or create it)",
}


def error_message(e: BaseException) -> str:
    """The one line of a user error: ssl_jax's own message, or for a bare OS error its cause,
    the path and the fix."""
    if isinstance(e, OSError) and e.strerror and len(e.args) >= 2:  # raised by the OS, not by us
        path = f": {e.filename}" if e.filename else ""
        fix = _OS_FIXES.get(e.errno, "check the path and its permissions")
        return f"{e.strerror}{path} ({type(e).__name__}); {fix}."
    return str(e) or type(e).__name__


def fail(message: str, code: int = 1):
    """Print `ssl_jax: error: MESSAGE` on stderr and exit with `code` (no traceback)."""
    print(f"ssl_jax: error: {message}", file=sys.stderr)
    sys.exit(code)


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The flags of the commands that run a config in a workdir (training, evaluation)."""
    config: flags.FlagHolder
    workdir: flags.FlagHolder
    multihost: flags.FlagHolder
    coordinator_address: flags.FlagHolder
    num_processes: flags.FlagHolder
    process_id: flags.FlagHolder
    print_config: flags.FlagHolder


def define_run_flags(config_example: str, workdir_help: str = "Directory for checkpoints, metrics and "
                     "results (a rerun of the same command resumes from it).") -> RunFlags:
    """Defines --config (an ml_collections config file, every field overridable as
    --config.a.b=value), --workdir and the multi-process flags; call once per entry point."""
    from ml_collections import config_flags

    run_flags = RunFlags(
        config=config_flags.DEFINE_config_file("config", None, f"Config file, e.g. {config_example}.",
                                               lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, workdir_help),
        multihost=flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the "
                                    "coordinator, process count and id read from the cluster (Cloud TPU "
                                    "pod slices, SLURM)."),
        coordinator_address=flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, "
                                                "for a multi-process run without cluster detection (with "
                                                "--num_processes and --process_id)."),
        num_processes=flags.DEFINE_integer("num_processes", None,
                                           "Number of processes of an explicit multi-process run."),
        process_id=flags.DEFINE_integer("process_id", None,
                                        "This process's index in an explicit multi-process run."),
        print_config=flags.DEFINE_bool("print_config", False, "Print the resolved config (the file's "
                                       "preset with every --config.* override applied) and exit; "
                                       "needs no --workdir."))
    flags.mark_flags_as_required(["config"])  # --workdir: checked in `run` (not for --print_config)
    return run_flags


def parse_flags(argv):
    """absl flag parsing; a bad flag, a missing config file, a config file that raises or an
    unknown config field is one message and exit code 2, no traceback."""
    check_config_file(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if "Traceback" in message:  # an error raised by the config file itself: keep its last line
            message = f"{argv_config(argv)}: " + message.strip().splitlines()[-1]
        fail(f"{message.rstrip('.')}. Pass --helpshort for the flags.", code=2)
    except (AttributeError, KeyError) as e:  # config_flags on an override of a missing field
        path, close = _unknown_override(argv)
        hint = f" Did you mean {close}?" if close else ""
        fail(f"unknown config field {path or e!s} in the command line: it is not a field of "
             f"{argv_config(argv)}.{hint} The method's own fields are in its config file; the shared "
             "ones (data, model, optimizer, eval, checkpoint, mesh, ...) in ssl_jax/presets.py "
             "(base_config); --print_config shows them all.", code=2)


def check_config_file(argv) -> None:
    """A --config file that does not exist is one line at once (config_flags would report it
    only when the config is first read, after the heavy imports)."""
    spec = argv_config(argv)
    path = spec.partition(":")[0]
    if spec != "the config" and not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        fail(f"config file {path} does not exist{where}; pass a file of configs/, e.g. "
             "--config=configs/byol.py:demo.", code=2)


def argv_config(argv) -> str:
    """The --config value of a command line ('the config' if none)."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "the config")


def _unknown_override(argv) -> tuple[str | None, str | None]:
    """(the first --config.a.b=... override whose path is not a field of the config, the
    closest existing path at the level where it went wrong or None)."""
    from ssl_jax import presets

    try:
        config = presets.load_config_file(argv_config(argv))
    except Exception:  # the config itself is broken: flag parsing reports that
        return None, None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, path = config, arg[len("--config."):].split("=", 1)[0]
        keys = path.split(".")
        for depth, key in enumerate(keys):
            if not hasattr(node, "keys") or key not in node.keys():
                names = list(node.keys()) if hasattr(node, "keys") else []
                close = difflib.get_close_matches(key, names, n=1)
                return path, ".".join(keys[:depth] + close) if close else None
            node = node[key]
    return None, None


def quiet_library_logs():
    """Library INFO logs (orbax writes several lines per checkpoint) would drown the progress
    line; pass --verbosity=0 to see them."""
    if flags.FLAGS["verbosity"].value == 0 and "--verbosity" not in " ".join(sys.argv):
        logging.set_verbosity(logging.WARNING)


def initialize_distributed(run_flags: RunFlags):
    """jax.distributed.initialize() as the multi-process flags ask (nothing for one process)."""
    from ssl_jax import parallel

    parallel.initialize_distributed(run_flags.multihost.value, run_flags.coordinator_address.value,
                                    run_flags.num_processes.value, run_flags.process_id.value)


@contextlib.contextmanager
def user_errors(name: str = "ssl_jax"):
    """A user's error is one line and exit code 1; a preemption (SIGTERM, after the checkpoint
    is written) is one line and PREEMPTED_EXIT_CODE, which the launchers rerun."""
    from ssl_jax.train import preemption

    try:
        yield
    except preemption.Preempted as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except USER_ERRORS as e:
        fail(error_message(e))


def run(body: Callable[[object, str], object], run_flags: RunFlags, name: str = "ssl_jax",
        check_workdir: Callable[[str], None] | None = None) -> None:
    """The whole life of a run command: parse the flags, quiet the logs, check the workdir
    (`check_workdir(workdir)`, before the processes start and the heavy imports), start the
    processes, call body(config, workdir) with user errors reported in one line."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        if run_flags.print_config.value:
            print(run_flags.config.value.to_json_best_effort(indent=2, sort_keys=True))
            return
        if run_flags.workdir.value is None:
            fail("--workdir is required: the directory of the run's checkpoints, metrics and results.",
                 code=2)
        quiet_library_logs()
        if check_workdir is not None:  # outside user_errors, which imports JAX
            try:
                check_workdir(run_flags.workdir.value)
            except USER_ERRORS as e:
                fail(error_message(e))
        with user_errors(name):
            initialize_distributed(run_flags)
            body(run_flags.config.value, run_flags.workdir.value)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_flags.set_cpu_defaults()  # the commands' XLA CPU default, before JAX starts
    app.run(main, flags_parser=parse_flags)
