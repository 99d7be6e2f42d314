// 2-D convolutions (float32, NHWC activations, HWIO kernel) by oneDNN, as XLA FFI custom calls
// for the CPU backend: the forward pass, the input gradient and the kernel gradient. Built and
// registered by ssl_jax/native/__init__.py; used by ssl_jax/models/conv.py.
//
// Why: on the CPUs measured (benchmarks/RESULTS_train_step.md, sections 13 and 14) XLA's
// kernel gradient is 1.6-5x slower than oneDNN's at the 32 and 16 px ResNet layers, and its
// forward and input-gradient convolutions 13-21% slower at 32, 16 and 8 px.
//
// Every handler takes the strides and the top / left padding as attributes (the bottom / right
// padding follows from the shapes). Primitives are created once per shape and cached. oneDNN
// picks its own kernel layout ('any'); the HWIO kernel is reordered into it (forward, input
// gradient) or the gradient out of it (kernel gradient) when the layouts differ.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

enum Op : int64_t { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

// (op, N, H, W, Ci, OH, OW, Co, KH, KW, stride h, stride w, pad top, pad left)
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Conv {
  dnnl::primitive primitive;
  dnnl::memory::desc src, dst, weights;  // weights: the layout the primitive uses
  dnnl::memory::desc hwio;               // the caller's kernel layout
};

const Conv& CachedConv(const Key& key) {
  static std::map<Key, std::unique_ptr<Conv>> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;
  auto [op, n, h, w, ci, oh, ow, co, kh, kw, sh, sw, pt, pl] = key;
  dnnl::memory::desc src({n, ci, h, w}, Type::f32, Tag::nhwc);
  dnnl::memory::desc dst({n, co, oh, ow}, Type::f32, Tag::nhwc);
  dnnl::memory::desc any_weights({co, ci, kh, kw}, Type::f32, Tag::any);
  dnnl::memory::desc hwio({co, ci, kh, kw}, Type::f32, Tag::hwio);
  dnnl::memory::dims strides{sh, sw}, pad_before{pt, pl};
  dnnl::memory::dims pad_after{(oh - 1) * sh + kh - h - pt, (ow - 1) * sw + kw - w - pl};
  auto forward = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any_weights, dst, strides, pad_before, pad_after);
  std::unique_ptr<Conv> conv;
  if (op == kForward) {
    conv.reset(new Conv{dnnl::convolution_forward(forward), src, dst, forward.weights_desc(), hwio});
  } else if (op == kInputGrad) {
    auto desc = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, any_weights, dst, strides, pad_before,
        pad_after, forward);
    conv.reset(new Conv{dnnl::convolution_backward_data(desc), src, dst, desc.weights_desc(), hwio});
  } else {
    auto desc = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, any_weights, dst, strides, pad_before,
        pad_after, forward);
    conv.reset(new Conv{dnnl::convolution_backward_weights(desc), src, dst, desc.diff_weights_desc(), hwio});
  }
  return *(cache[key] = std::move(conv));
}

// Runs `op` on x [N,H,W,Ci], y [N,OH,OW,Co], k [KH,KW,Ci,Co]: two of them are inputs and the
// third is the output (forward: y; input gradient: x; kernel gradient: k).
ffi::Error Run(Op op, float* x, ffi::Span<const int64_t> xs, float* y, ffi::Span<const int64_t> ys,
               float* k, ffi::Span<const int64_t> ks, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  if (xs.size() != 4 || ys.size() != 4 || ks.size() != 4 || xs[0] != ys[0] || ks[2] != xs[3] ||
      ks[3] != ys[3]) {
    return ffi::Error::InvalidArgument(
        "onednn conv: expected x [N,H,W,Ci], y [N,OH,OW,Co], kernel [KH,KW,Ci,Co]");
  }
  const Conv& conv = CachedConv(
      {op, xs[0], xs[1], xs[2], xs[3], ys[1], ys[2], ys[3], ks[0], ks[1], sh, sw, pt, pl});
  // One call at a time. XLA runs independent operations on several threads, and oneDNN's
  // primitives share one scratchpad (the library's default), so two calls at once corrupted
  // each other: a kernel spun forever on a barrier, a BYOL demo ended with a NaN loss
  // (tests/test_conv.py runs independent calls concurrently). Each call uses every core.
  static std::mutex running;
  std::lock_guard<std::mutex> one_at_a_time(running);
  dnnl::stream stream(Engine());
  dnnl::memory src(conv.src, Engine(), x), dst(conv.dst, Engine(), y), hwio(conv.hwio, Engine(), k);
  dnnl::memory weights = hwio;
  bool reorder = conv.weights != conv.hwio;
  if (reorder) weights = dnnl::memory(conv.weights, Engine());
  if (reorder && op != kWeightGrad) dnnl::reorder(hwio, weights).execute(stream, hwio, weights);
  if (op == kForward) {
    conv.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  } else if (op == kInputGrad) {
    conv.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, src}});
  } else {
    conv.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_DIFF_WEIGHTS, weights}});
    if (reorder) dnnl::reorder(weights, hwio).execute(stream, weights, hwio);
  }
  stream.wait();
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 k, F32Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  return Run(kForward, x.typed_data(), x.dimensions(), y->typed_data(), y->dimensions(),
             k.typed_data(), k.dimensions(), sh, sw, pt, pl);
}

ffi::Error InputGrad(F32 dy, F32 k, F32Out dx, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  return Run(kInputGrad, dx->typed_data(), dx->dimensions(), dy.typed_data(), dy.dimensions(),
             k.typed_data(), k.dimensions(), sh, sw, pt, pl);
}

ffi::Error WeightGrad(F32 x, F32 dy, F32Out dk, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  return Run(kWeightGrad, x.typed_data(), x.dimensions(), dy.typed_data(), dy.dimensions(),
             dk->typed_data(), dk->dimensions(), sh, sw, pt, pl);
}

}  // namespace

#define SSL_JAX_CONV_BINDING                                                                  \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("stride_h").Attr<int64_t>( \
      "stride_w").Attr<int64_t>("pad_top").Attr<int64_t>("pad_left")

// forward: (x, kernel) -> y; input gradient: (dy, kernel) -> dx; kernel gradient: (x, dy) -> dk
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslJaxOnednnConvForward, Forward, SSL_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslJaxOnednnConvInputGrad, InputGrad, SSL_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslJaxOnednnConvWeightGrad, WeightGrad, SSL_JAX_CONV_BINDING);
