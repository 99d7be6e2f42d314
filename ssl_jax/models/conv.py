"""oneDNN's convolutions (CPU) for ``nn.Conv(conv_general_dilated=...)``.

`conv_with_onednn` has `jax.lax.conv_general_dilated`'s signature. Where it applies, the
forward pass, the input gradient and the kernel gradient are the oneDNN custom calls of
`ssl_jax.native` (a `jax.custom_vjp`), which on the CPU measured are 13-21% faster than XLA's
(forward, input gradient) and 1.6-5x faster (kernel gradient) at the 32, 16 and 8 px layers of a
CIFAR ResNet (benchmarks/RESULTS_train_step.md, sections 13 and 14). Everything else is plain
`lax.conv_general_dilated`: convolutions that are not 2-D NHWC / HWIO float32, dilated, grouped
or with negative padding, and those with an output map under `MIN_ONEDNN_OUTPUT_PIXELS`
positions, where XLA's three operations together were faster (the 4x4 stage of the CIFAR
ResNet, batch 128: 139 against 176 ms for its 3x3 convolution; oneDNN's forward took 1.4x XLA's).

The custom calls compute on whole arrays, so they are for a single CPU device:
`resolve_conv_backend` picks them only there (the `conv_backend` model option), and sharded
steps keep XLA's convolutions, which the partitioner splits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssl_jax import native

_NHWC = ("NHWC", "HWIO", "NHWC")
CONV_BACKENDS = ("auto", "xla", "onednn")
# Output maps smaller than 8x8 stay XLA's (module docstring).
MIN_ONEDNN_OUTPUT_PIXELS = 64


def resolve_conv_backend(choice: str, devices=None) -> str:
    """'xla' or 'onednn' for the model option `conv_backend`: 'auto' is 'onednn' on a single
    CPU device where the kernels build, else 'xla'; 'onednn' where it cannot be used is an
    error naming why.

    `devices`: the devices the model will run on (default jax.devices()). A compile for
    another platform (python -m ssl_jax.compile: a TPU topology from a CPU host) passes its
    target devices, so that the host's CPU never picks the oneDNN custom calls for it."""
    if choice not in CONV_BACKENDS:
        raise ValueError(f"model.conv_backend={choice!r} is not one of {CONV_BACKENDS}.")
    if choice == "xla":
        return "xla"
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != 1 or devices[0].platform != "cpu":
        if choice == "onednn":
            raise ValueError(f"model.conv_backend='onednn' runs on one CPU device, the model runs on "
                             f"{len(devices)} {devices[0].platform} device(s); set "
                             "--config.model.conv_backend=auto (or xla).")
        return "xla"
    if not native.onednn_conv_available():
        if choice == "onednn":
            raise ValueError(f"model.conv_backend='onednn' is unavailable ({native.unavailable_reason()}); "
                             f"set --config.model.conv_backend=auto (or xla).")
        return "xla"
    return "onednn"


def _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             batch_group_count) -> bool:
    """Whether the oneDNN kernels compute this convolution (all but its output size)."""
    if lhs.ndim != 4 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return False
    if not isinstance(padding, str) and any(p < 0 for pair in padding for p in pair):
        return False
    spec = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or _NHWC)
    return spec == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)


def conv_with_onednn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                     precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, computed (forward and both gradients) by oneDNN where it applies."""
    xla = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
                            rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                            precision, preferred_element_type)
    if preferred_element_type is not None or not _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                                                          dimension_numbers, feature_group_count,
                                                          batch_group_count):
        return xla()
    out_shape = jax.eval_shape(xla).shape
    if out_shape[1] * out_shape[2] < MIN_ONEDNN_OUTPUT_PIXELS:
        return xla()
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, padding):
    return onednn_conv("forward", x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return _conv(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, dy):
    x, w = residuals
    return (onednn_conv("input_grad", dy, w, strides, padding, out_shape=x.shape),
            onednn_conv("weight_grad", x, dy, strides, padding, out_shape=w.shape))


_conv.defvjp(_conv_fwd, _conv_bwd)


def onednn_conv(op: str, a, b, strides, padding, out_shape=None):
    """One NHWC / HWIO float32 convolution operation by oneDNN (`ssl_jax.native` must be available):
    'forward' (x, kernel) -> y; 'input_grad' (dy, kernel) -> dx; 'weight_grad' (x, dy) -> dkernel.
    `out_shape` is the shape of x (input_grad) or of the kernel (weight_grad); the forward's
    follows from the operands."""
    if not native.onednn_conv_available():
        raise RuntimeError(f"the oneDNN kernels are unavailable: {native.unavailable_reason()}")
    if op == "forward":
        out_shape = jax.eval_shape(functools.partial(lax.conv_general_dilated, window_strides=strides,
                                                     padding=padding, dimension_numbers=_NHWC), a, b).shape
    # Under vmap the call runs once per mapped element ('sequential'): correct, not fast; the
    # models call it on whole batches.
    call = jax.ffi.ffi_call(f"ssl_jax_onednn_conv_{op}", jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32),
                            vmap_method="sequential")
    return call(a, b, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
                pad_top=np.int64(padding[0][0]), pad_left=np.int64(padding[1][0]))
