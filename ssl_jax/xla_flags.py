"""The XLA flags the command-line entry points run with (ssl_jax.cli.run, python -m
ssl_jax.export, the benchmarks, the tests). Never applied on `import ssl_jax`: a library does not
change its user's environment.

CPU default, measured (benchmarks/RESULTS_train_step.md, 2-core x86 CPU, jaxlib 0.10.2): with
XLA's YNNPACK fusion switched off, the BYOL ResNet-18 step runs 12.4-12.8 images/s instead of
10.0-10.3 and needs 842 MB instead of 1139 MB. It only changes the CPU backend.
"""
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def set_cpu_defaults(environ=os.environ) -> None:
    """Add YNN_FLAG (off) to environ['XLA_FLAGS'] unless the user set that flag (any value,
    even the default, wins). It must run before JAX creates its CPU client."""
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
