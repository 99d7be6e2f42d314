"""A convolution whose kernel gradient is oneDNN's (CPU), for ``nn.Conv(conv_general_dilated=...)``.

`conv_with_onednn_weight_grad` has `jax.lax.conv_general_dilated`'s signature and forward
pass. Its gradient with respect to the input is XLA's; its gradient with respect to the kernel
is the oneDNN custom call of `ssl_jax.native` (XLA CPU's is 1.6-5x slower at the 32 and 16 px
ResNet layers: benchmarks/RESULTS_train_step.md, section 13). Convolutions it does not cover
(not 2-D NHWC / HWIO float32, dilated, grouped or with negative padding) are plain
`lax.conv_general_dilated`.

The custom call computes on whole arrays, so it is for a single CPU device: `resolve_weight_grad`
picks it only there (see the `conv_weight_grad` model option), and sharded steps keep XLA's
gradient, which the partitioner splits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssl_jax import native

_NHWC = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRAD_CHOICES = ("auto", "xla", "onednn")


def resolve_weight_grad(choice: str) -> str:
    """'xla' or 'onednn' for the model option `conv_weight_grad`: 'auto' is 'onednn' on a
    single CPU device where the kernel builds, else 'xla'; 'onednn' where it cannot be used
    is an error naming why."""
    if choice not in WEIGHT_GRAD_CHOICES:
        raise ValueError(f"model.conv_weight_grad={choice!r} is not one of {WEIGHT_GRAD_CHOICES}.")
    if choice == "xla":
        return "xla"
    if jax.device_count() != 1:
        if choice == "onednn":
            raise ValueError(f"model.conv_weight_grad='onednn' runs on one CPU device, this process has "
                             f"{jax.device_count()}; set --config.model.conv_weight_grad=auto (or xla).")
        return "xla"
    if not native.onednn_weight_grad_available():
        if choice == "onednn":
            raise ValueError(f"model.conv_weight_grad='onednn' is unavailable ({native.unavailable_reason()}); "
                             f"set --config.model.conv_weight_grad=auto (or xla).")
        return "xla"
    return "onednn"


def _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             batch_group_count) -> bool:
    """Whether the oneDNN kernel computes this convolution's kernel gradient."""
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


def conv_with_onednn_weight_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                                 precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, with oneDNN's kernel gradient where it applies."""
    if preferred_element_type is not None or not _covered(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                                                          dimension_numbers, feature_group_count,
                                                          batch_group_count):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision, preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _conv_fwd(x, w, strides, padding, precision):
    return _conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, dy):
    x, w = residuals
    _, input_vjp = jax.vjp(
        lambda x: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision), x)
    return input_vjp(dy)[0], onednn_weight_grad(x, dy, w.shape, strides, padding)


_conv.defvjp(_conv_fwd, _conv_bwd)


def onednn_weight_grad(x, dy, kernel_shape, strides, padding):
    """d(loss)/d(kernel) [KH, KW, Ci, Co] of the NHWC / HWIO convolution of x [N, H, W, Ci] with
    output gradient dy [N, OH, OW, Co], by oneDNN (`ssl_jax.native` must be available)."""
    if not native.onednn_weight_grad_available():
        raise RuntimeError(f"the oneDNN kernel is unavailable: {native.unavailable_reason()}")
    call = jax.ffi.ffi_call(native.FFI_TARGET, jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32))
    return call(x, dy, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
                pad_top=np.int64(padding[0][0]), pad_left=np.int64(padding[1][0]))
