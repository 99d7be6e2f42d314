// The weight gradient of a 2-D convolution (float32, NHWC input, HWIO kernel) by oneDNN, as
// an XLA FFI custom call for the CPU backend. Built and registered by ssl_jax/native/__init__.py.
//
// Why: XLA CPU computes this gradient as a convolution of the N<->C-transposed activation with
// the output gradient as its kernel, 1.6-5x slower than oneDNN at the 32 and 16 px ResNet layers
// (benchmarks/RESULTS_train_step.md, section 13). Forward and input-gradient convolutions
// stay XLA's: there oneDNN was not consistently faster (section 12).
//
// Inputs: x [N, H, W, Ci], dy [N, OH, OW, Co]; output: dw [KH, KW, Ci, Co]; attributes: the
// strides and the top / left padding (the bottom / right padding follows from the shapes).
// Primitives are created once per shape and cached; oneDNN picks its own layout for the
// gradient, reordered into HWIO when it differs.
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

struct WeightGrad {
  dnnl::convolution_backward_weights::primitive_desc desc;
  dnnl::convolution_backward_weights primitive;
  dnnl::memory::desc hwio;
  bool needs_reorder;
};

using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t>;

const WeightGrad& CachedWeightGrad(const Shape& s) {
  static std::map<Shape, std::unique_ptr<WeightGrad>> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(s);
  if (found != cache.end()) return *found->second;
  auto [n, h, w, ci, oh, ow, co, kh, kw, sh, sw, pt, pl] = s;
  dnnl::memory::desc src({n, ci, h, w}, Type::f32, Tag::nhwc);
  dnnl::memory::desc dst({n, co, oh, ow}, Type::f32, Tag::nhwc);
  dnnl::memory::desc any_weights({co, ci, kh, kw}, Type::f32, Tag::any);
  dnnl::memory::dims strides{sh, sw}, pad_before{pt, pl};
  dnnl::memory::dims pad_after{(oh - 1) * sh + kh - h - pt, (ow - 1) * sw + kw - w - pl};
  auto forward = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any_weights, dst, strides, pad_before, pad_after);
  auto desc = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src, any_weights, dst, strides, pad_before,
      pad_after, forward);
  dnnl::memory::desc hwio({co, ci, kh, kw}, Type::f32, Tag::hwio);
  auto entry = std::make_unique<WeightGrad>(
      WeightGrad{desc, dnnl::convolution_backward_weights(desc), hwio, desc.diff_weights_desc() != hwio});
  return *(cache[s] = std::move(entry));
}

ffi::Error ConvWeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left) {
  auto xs = x.dimensions(), dys = dy.dimensions(), dws = dw->dimensions();
  if (xs.size() != 4 || dys.size() != 4 || dws.size() != 4 || xs[0] != dys[0] ||
      dws[2] != xs[3] || dws[3] != dys[3]) {
    return ffi::Error::InvalidArgument("onednn conv weight grad: expected x [N,H,W,Ci], dy [N,OH,OW,Co], dw [KH,KW,Ci,Co]");
  }
  const WeightGrad& wg = CachedWeightGrad(
      {xs[0], xs[1], xs[2], xs[3], dys[1], dys[2], dys[3], dws[0], dws[1], stride_h, stride_w, pad_top, pad_left});
  dnnl::stream stream(Engine());
  dnnl::memory src(wg.desc.src_desc(), Engine(), x.typed_data());
  dnnl::memory diff_dst(wg.desc.diff_dst_desc(), Engine(), dy.typed_data());
  dnnl::memory out(wg.hwio, Engine(), dw->typed_data());
  if (wg.needs_reorder) {
    dnnl::memory blocked(wg.desc.diff_weights_desc(), Engine());
    wg.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, blocked}});
    dnnl::reorder(blocked, out).execute(stream, blocked, out);
  } else {
    wg.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, out}});
  }
  stream.wait();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SslJaxOnednnConvWeightGrad, ConvWeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
