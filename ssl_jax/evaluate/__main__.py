"""python -m ssl_jax.evaluate --config=configs/eval/<protocol>.py[:PRESET] --workdir=RUN_DIR

Evaluates the latest checkpoint of the training run in RUN_DIR (or the file / workdir named by
--config.source) with one protocol and merges the numbers into RUN_DIR/results.json. Every
config field can be overridden, e.g. --config.network=target --config.data.dataset=cifar10.
Flags and error handling: ssl_jax.cli (as training's). A linear / fine-tuning classifier is
checkpointed: a preempted evaluation resumes when rerun.
"""
from ssl_jax import cli

FLAGS = cli.define_run_flags("configs/eval/knn.py:demo", workdir_help="The training run's workdir; "
                             "results are merged into its results.json.")


def evaluate(config, workdir: str) -> list[dict]:
    from ssl_jax.evaluate import run  # after flag parsing: importing JAX/TF is slow

    return run.run(config, workdir)


if __name__ == "__main__":
    cli.run(evaluate, FLAGS, name="ssl_jax.evaluate")
