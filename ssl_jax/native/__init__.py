"""Native CPU kernels, called from jitted code as XLA FFI custom calls.

oneDNN's convolutions (`onednn_conv.cc`): the forward pass, the input gradient and the kernel
gradient of a 2-D float32 NHWC / HWIO convolution, which XLA CPU computes 13-21% (forward,
input gradient) and 1.6-5x (kernel gradient) slower at the 32, 16 and 8 px ResNet layers
(benchmarks/RESULTS_train_step.md, sections 13 and 14). They are compiled from source on first
use with the C++ compiler (`CXX`, default g++) against the oneDNN wheels (`onednn-cpu-gomp`,
`onednn-devel-cpu-gomp`, installed with ssl_jax on x86-64 Linux) and the FFI headers that ship
with jaxlib, into a cache directory (`SSL_JAX_NATIVE_CACHE`, default ~/.cache/ssl_jax/native)
keyed by the source, jaxlib and oneDNN versions, so the build runs once per machine (~5 s).

Nothing here is required: where the build or the load fails (no compiler, no oneDNN, another
platform) `onednn_conv_available()` is False, says why in `unavailable_reason()`, and the
models keep XLA's convolutions.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import tempfile

import jax

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
# FFI target name -> the handler symbol in the library.
FFI_TARGETS = {"ssl_jax_onednn_conv_forward": "SslJaxOnednnConvForward",
               "ssl_jax_onednn_conv_input_grad": "SslJaxOnednnConvInputGrad",
               "ssl_jax_onednn_conv_weight_grad": "SslJaxOnednnConvWeightGrad"}


def _library_path() -> pathlib.Path:
    versions = [importlib.metadata.version(p) for p in ("jaxlib", "onednn-cpu-gomp")]
    key = hashlib.sha256(_SOURCE.read_bytes() + repr(versions).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("SSL_JAX_NATIVE_CACHE", pathlib.Path.home() / ".cache/ssl_jax/native"))
    return cache / f"onednn_conv_{key}.so"


def _build(target: pathlib.Path) -> None:
    prefix = pathlib.Path(sys.prefix)  # where the oneDNN wheels put include/ and lib/
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: a concurrent or interrupted build never
    # leaves a half-written library at the cached path.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [os.environ.get("CXX", "g++"), "-O3", "-std=c++17", "-shared", "-fPIC", str(_SOURCE), "-o", tmp,
           f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", f"-L{prefix / 'lib'}", "-ldnnl",
           f"-Wl,-rpath,{prefix / 'lib'}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"compiling {_SOURCE.name} failed: {e.stderr.strip()[-500:]}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def _load() -> tuple[bool, str]:
    """Builds (once) and registers the oneDNN kernels: (True, '') or (False, why not)."""
    try:
        if jax.default_backend() != "cpu":
            raise RuntimeError(f"the kernels are for the CPU backend, this is {jax.default_backend()}")
        if sys.platform != "linux":
            raise RuntimeError(f"built only on Linux, this is {sys.platform}")
        path = _library_path()
        if not path.exists():
            _build(path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in FFI_TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        return True, ""
    # AttributeError: a library without one of the handlers (not built from this source).
    except (OSError, RuntimeError, AttributeError, importlib.metadata.PackageNotFoundError,
            FileNotFoundError) as e:
        return False, f"{type(e).__name__}: {e}"


def onednn_conv_available() -> bool:
    """Whether the oneDNN convolution kernels are built and registered (building them once)."""
    return _load()[0]


def unavailable_reason() -> str:
    """Why `onednn_conv_available()` is False ('' if it is not)."""
    return _load()[1]
