"""python -m ssl_jax.evaluate --config=configs/eval/<protocol>.py[:PRESET] --workdir=RUN_DIR

Evaluates the latest checkpoint of the training run in RUN_DIR (or the file / workdir named by
--config.source) with one protocol and merges the numbers into RUN_DIR/results.json. Every
config field can be overridden, e.g. --config.network=target --config.data.dataset=cifar10.
Flags and error handling are the training entry point's (ssl_jax.main).
"""
import os
import sys

from absl import app

from ssl_jax import main as cli


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    from ssl_jax.evaluate import run  # after flag parsing: importing JAX/TF is slow
    from ssl_jax.train import preemption

    try:
        cli.initialize_distributed()
        run.run(cli.CONFIG.value, cli.WORKDIR.value)
    except preemption.Preempted as e:  # the classifier is checkpointed: rerunning resumes
        print(f"ssl_jax.evaluate: {e}", file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        cli.fail(str(e))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=cli.parse_flags)
