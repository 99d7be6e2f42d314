"""ssl_jax: self-supervised visual representation learning in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="ssl_jax",
    version="0.1.0",
    description="Self-supervised visual representation learning in JAX/Flax "
    "(BYOL and more) on a sharded, resumable engine.",
    # configs/ ships inside the package as ssl_jax/configs, so `ssl_jax.config("byol", "demo")`
    # finds it in an installed wheel too (in a checkout it is read beside the package).
    packages=find_packages(include=["ssl_jax", "ssl_jax.*"]) + ["ssl_jax.configs", "ssl_jax.configs.eval"],
    package_dir={"ssl_jax.configs": "configs"},
    package_data={"ssl_jax.native": ["*.cc"]},  # compiled on first use (ssl_jax/native)
    python_requires=">=3.10",
    # Ranges tested: the lower bounds are the versions this was developed and
    # tested with (Python 3.11, CPU); the upper bounds stop at the next major/minor
    # release whose APIs (jax.sharding, orbax CheckpointManager args, flax.linen)
    # have not been tested here.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-cpu>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "ml-collections>=1.1,<2",
        "chex>=0.1.92,<0.2",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "scikit-learn>=1.5,<2",  # ships the `demo` preset's dataset (handwritten digits)
        "tensorboardX>=2.6,<3",  # TensorBoard event files without a TF summary writer
        "scipy>=1.13,<2",  # Hungarian matching of the clustering accuracy
        "safetensors>=0.4,<1",  # params export (safetensors.numpy; no PyTorch)
        "matplotlib>=3.8,<4",  # ssl_jax.report plots
        # oneDNN's convolutions on one CPU device (ssl_jax/native, built on first use with g++;
        # without it the models keep XLA's). The headers must match the library.
        "onednn-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "onednn-devel-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    # pytest-xdist: the README's test command runs the tests in 2 processes.
    # tpu: libtpu, the TPU compiler, for `python -m ssl_jax.compile` (compile a run for a TPU
    # topology on any machine, tests/test_tpu_compile.py) and for training on a Cloud TPU VM; the
    # jax[tpu] extra pins the libtpu of the installed jax (0.0.42.* for 0.10.2; a 213 MB wheel).
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5,<4"], "tpu": ["jax[tpu]>=0.10.2,<0.11"]},
)
