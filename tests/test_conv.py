"""The oneDNN kernel gradient (ssl_jax/native, ssl_jax.models.conv) against XLA's autodiff."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssl_jax import native
from ssl_jax.models import build_encoder
from ssl_jax.models.conv import conv_with_onednn_weight_grad, onednn_weight_grad, resolve_weight_grad
from tests.conftest import REPO_ROOT, device_env

needs_onednn = pytest.mark.skipif(not native.onednn_weight_grad_available(),
                                  reason=f"oneDNN kernel unavailable: {native.unavailable_reason()}")
NHWC = ("NHWC", "HWIO", "NHWC")

# (input [N, H, W, Ci], kernel [KH, KW, Ci, Co], strides, padding): the ResNet convolutions
# (3x3 same, strided 3x3 with (0, 1) or (1, 1) padding, strided 1x1, the 7x7/2 stem, the
# 3-channel CIFAR stem) and a non-square, uneven one.
CASES = [
    ((4, 16, 16, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1))),
    ((4, 16, 16, 8), (3, 3, 8, 16), (2, 2), ((0, 1), (0, 1))),
    ((4, 16, 16, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),
    ((4, 16, 16, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0))),
    ((2, 32, 32, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ((4, 16, 16, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),
    ((3, 9, 13, 5), (3, 2, 5, 7), (2, 1), ((2, 0), (1, 0))),
]


def _data(x_shape, w_shape, strides, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    return x, w, dy


def _close(got, want, tol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_onednn_weight_grad_equals_xla(x_shape, w_shape, strides, padding):
    x, w, dy = _data(x_shape, w_shape, strides, padding)
    want = jax.vjp(lambda w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC), w)[1](dy)[0]
    got = jax.jit(lambda x, dy: onednn_weight_grad(x, dy, w.shape, strides, padding))(x, dy)
    _close(got, want)


@needs_onednn
@pytest.mark.parametrize("case", [0, 1, 4])
def test_conv_forward_and_both_gradients_equal_lax(case):
    """Forward and input gradient are XLA's own; the kernel gradient oneDNN's; and the
    custom call is really in the compiled gradient."""
    x_shape, w_shape, strides, padding = CASES[case]
    x, w, dy = _data(x_shape, w_shape, strides, padding, seed=1)
    ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    new = lambda x, w: conv_with_onednn_weight_grad(x, w, strides, padding, dimension_numbers=NHWC)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y_new, vjp_new = jax.vjp(new, x, w)
    np.testing.assert_array_equal(y_new, y_ref)
    for got, want in zip(vjp_new(dy), vjp_ref(dy)):
        _close(got, want)
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(new(x, w) * dy), argnums=1)).lower(x, w).as_text()
    assert native.FFI_TARGET in hlo


def test_uncovered_convolutions_are_plain_xla():
    """Grouped, dilated and bfloat16 convolutions give lax's results and gradients with no
    custom call; string padding is resolved as lax resolves it."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4), np.float32))
    w_grouped = jnp.asarray(rng.standard_normal((3, 3, 2, 4), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4), np.float32))
    cases = {
        "grouped": (x, w_grouped, dict(feature_group_count=2)),
        "dilated": (x, w, dict(rhs_dilation=(2, 2))),
        "bfloat16": (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), {}),
    }
    for name, (xc, wc, kw) in cases.items():
        def loss(conv, x, w):
            return jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC, **kw).astype(jnp.float32) ** 2)
        grad = jax.grad(loss, argnums=(1, 2))
        for got, want in zip(grad(conv_with_onednn_weight_grad, xc, wc), grad(lax.conv_general_dilated, xc, wc)):
            np.testing.assert_array_equal(got, want, err_msg=name)
        jaxpr = str(jax.make_jaxpr(lambda x, w: grad(conv_with_onednn_weight_grad, x, w))(xc, wc))
        assert "ffi_call" not in jaxpr and "custom_vjp" not in jaxpr, name
    strided_same = lambda f: f(x, w, (2, 2), "SAME", dimension_numbers=NHWC)
    np.testing.assert_array_equal(strided_same(conv_with_onednn_weight_grad), strided_same(lax.conv_general_dilated))


@needs_onednn
def test_resnet_gradients_and_params_equal_with_either_weight_grad():
    """A ResNet-18 (CIFAR stem) and a ResNet-50 (ImageNet stem, bottlenecks) at small width:
    the same parameters, outputs and gradients (float32 summation order aside)."""
    rng = np.random.default_rng(3)
    for name, cifar, size in (("resnet18", True, 16), ("resnet50", False, 32)):
        x = jnp.asarray(rng.random((4, size, size, 3), np.float32))
        out = {}
        for impl in ("xla", "onednn"):
            enc = build_encoder(dict(name=name, width=0.125, cifar_stem=cifar, dtype="float32",
                                     conv_weight_grad=impl))
            assert enc.conv_weight_grad == impl
            v = enc.init(jax.random.PRNGKey(0), x, train=False)

            def loss(p):
                h, _ = enc.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
                return jnp.sum(jnp.sin(3 * h))
            out[impl] = (v["params"], *jax.jit(jax.value_and_grad(loss))(v["params"]))
        jax.tree.map(np.testing.assert_array_equal, out["xla"][0], out["onednn"][0])
        np.testing.assert_allclose(out["onednn"][1], out["xla"][1], rtol=1e-6)
        jax.tree.map(lambda a, b: _close(a, b, 1e-4), out["onednn"][2], out["xla"][2])


def test_resolve_weight_grad_choices():
    assert resolve_weight_grad("xla") == "xla"
    with pytest.raises(ValueError, match="conv_weight_grad='cudnn' is not one of"):
        resolve_weight_grad("cudnn")
    want = "onednn" if native.onednn_weight_grad_available() else "xla"
    assert resolve_weight_grad("auto") == want
    if want == "xla":
        with pytest.raises(ValueError, match="unavailable"):
            resolve_weight_grad("onednn")


def test_resolve_weight_grad_on_eight_devices_keeps_xla():
    """The custom call is not partitioned: with 8 devices 'auto' is XLA and 'onednn' an error."""
    code = ("from ssl_jax.models.conv import resolve_weight_grad\n"
            "assert resolve_weight_grad('auto') == 'xla'\n"
            "try:\n    resolve_weight_grad('onednn')\nexcept ValueError as e:\n"
            "    assert 'one CPU device, this process has 8' in str(e), e\n"
            "else:\n    raise AssertionError('no error')\n")
    subprocess.run([sys.executable, "-c", code], env=device_env(8), cwd=REPO_ROOT, check=True, timeout=300)
