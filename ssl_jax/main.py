"""Entry point: python -m ssl_jax.main --config=configs/byol.py[:PRESET] --workdir=DIR.

Pretrains config.method, resuming from DIR if it holds a checkpoint, then evaluates (kNN,
linear probe, random-init baseline as the config asks) into DIR/results.json. Every config
field can be overridden from the command line, e.g. --config.optimizer.base_lr=0.3
--config.global_batch_size=512. Flags and error handling: ssl_jax.cli.

Before renting a TPU slice, compile the same run for it on any machine (memory per device, FLOPs,
collectives, a step-time estimate): python -m ssl_jax.compile --config=... --topology=v4:2x2x4.
"""
from ssl_jax import cli
from ssl_jax.train import workdir as workdir_lib

FLAGS = cli.define_run_flags("configs/byol.py:cifar10")


def pretrain(config, workdir: str) -> list[dict]:
    """Train and evaluate; the records written to WORKDIR/results.json."""
    from ssl_jax.evaluate import in_training  # after flag parsing: importing JAX/TF is slow

    if config.method == "sslpp":  # SSL++'s stages A, B, C (configs/sslpp.py)
        from ssl_jax import stages
        return stages.run(config, workdir)
    if config.method == "fussl":  # FUSSL's phase 1, labels, phase 2 (configs/fussl.py)
        from ssl_jax import fussl
        return fussl.run(config, workdir)
    return in_training.pretrain_and_evaluate(config, workdir)


if __name__ == "__main__":
    # The workdir is checked (a file, not writable) before JAX and TensorFlow are imported.
    cli.run(pretrain, FLAGS, name="ssl_jax", check_workdir=workdir_lib.check_before_start)
