// One decoder layer of a CPU step in one call: the same kernels, in the same order, as the
// Python layer (models/decoder.py), without a Python call and a dispatch per op. On a 2-core
// Xeon a bfloat16 decode step of SmolLM2 spent ~6 ms of ~24 between its 30 layers' ~400 op
// calls, and a float32 one on a 2-core Zen 2 ~20 ms of ~300; here a layer is one call.
//   a = rms_norm(x); q, k, v = a @ Wq, Wk, Wv (+ bias); [q, k = rms_norm per head]; RoPE(q, k);
//   the step's real rows of k, v into the arena; out = shared-prefix attention (the vector
//   kernel, or the brgemm one for prefill-like steps); x += out @ Wo;
//   b = rms_norm(x); x += (silu(b @ Wg) * (b @ Wu)) @ Wd.
// decoder_layer_ multiplies on small_linear's blocks (bfloat16, a few rows, the epilogues in
// the products); decoder_layer_packed_ on oneDNN's packed weights (ops/packed_linear.py's
// float32 layers: oneDNN's linear, then ATen's SiLU, product and sums, as the Python layer);
// decoder_layer_int8_ on int8 weights (ops/int8_linear.py: oneDNN's int8 GEMMs, q, k and v as
// one, or int8_few_rows.cpp's for a few rows of 7-bit weights, and int8_rows.cpp's kernels
// around them: RMSNorm then quantise, scale rows, quantise, scale-and-add, SiLU x up then
// quantise).
#include "erank_cpu.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/add.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/silu.h>

using erank_cpu::ADD;
using erank_cpu::NONE;

namespace {

struct LayerDims {
  int64_t m, h, hq, hkv, d, f;
};

// The checks every layer kind shares (its weights are checked by the caller).
LayerDims check_layer(const at::Tensor& x, const std::vector<at::Tensor>& norms,
                      const std::vector<int64_t>& dims, const at::Tensor& write_rows) {
  TORCH_CHECK(norms.size() == 2 || norms.size() == 4, "decoder layer: 2 norms (4 with q/k norms)");
  TORCH_CHECK(dims.size() == 4, "decoder layer: dims [heads, kv heads, head dim, intermediate]");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "decoder layer: x [M, H] contiguous");
  TORCH_CHECK(write_rows.numel() <= x.size(0), "decoder layer: more rows to write than rows");
  return {x.size(0), x.size(1), dims[0], dims[1], dims[2], dims[3]};
}

// The float layers' weights: q, k, v, o, gate, up and down, each with its bias or none.
void check_float_weights(const std::vector<at::Tensor>& weights,
                 const std::vector<c10::optional<at::Tensor>>& biases) {
  TORCH_CHECK(weights.size() == 7 && biases.size() == 7, "decoder layer: q, k, v, o, gate, up, "
              "down weights and biases");
}

// q/k norms, RoPE, the K/V write and the attention: out [M, Hq * D]
at::Tensor attend(at::Tensor q, at::Tensor k, const at::Tensor& v, const LayerDims& l,
                  const std::vector<at::Tensor>& norms, double eps, const at::Tensor& cos,
                  const at::Tensor& sin, const at::Tensor& k_arena, const at::Tensor& v_arena,
                  const at::Tensor& write_rows, const at::Tensor& q_cu,
                  const at::Tensor& own_base, const at::Tensor& own_start,
                  const at::Tensor& prefix_start, const at::Tensor& prefix_len, double scale,
                  bool brgemm, bool int8_attention) {
  if (norms.size() == 4) {
    q = rms_norm(q.reshape({l.m * l.hq, l.d}), norms[2], eps).view({l.m, l.hq, l.d});
    k = rms_norm(k.reshape({l.m * l.hkv, l.d}), norms[3], eps).view({l.m, l.hkv, l.d});
  }
  rotary_(q, k, cos, sin);
  const int64_t n = write_rows.numel();
  arena_write_(k_arena, v_arena, write_rows, k.narrow(0, 0, n), v.narrow(0, 0, n));
  auto out = brgemm ? shared_prefix_attention_brgemm(q, k_arena, v_arena, q_cu, own_base,
                                                     own_start, prefix_start, prefix_len, scale,
                                                     true)
                    : shared_prefix_attention(q, k_arena, v_arena, q_cu, own_base, own_start,
                                              prefix_start, prefix_len, scale, int8_attention);
  return out.view({l.m, l.hq * l.d});
}

// x [M, K] @ W^T (+ bias) on a weight packed by torch.ops.mkldnn._reorder_linear_weight, as
// ops/packed_linear.py's packed_matmul calls it
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed,
                         const c10::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&, c10::string_view,
                                         c10::List<c10::optional<at::Scalar>>,
                                         c10::optional<c10::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<c10::optional<at::Scalar>>(),
                 c10::string_view(""));
}

// (x_q - 128) @ W_q^T * w_scale in `dtype`, before each row's own scale: oneDNN's int8 GEMM
// as ops/int8_linear.py's Int8Linear.unscaled calls it (u8 activations, zero point 128)
at::Tensor int8_linear_unscaled(const at::Tensor& x_q, const at::Tensor& packed,
                                const at::Tensor& w_scale, const at::Tensor& w_zero,
                                at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  torch::jit::Stack stack{x_q, 1.0, int64_t{128}, packed, w_scale, w_zero, c10::IValue(), 1.0,
                          int64_t{0}, dtype, std::string("none"),
                          c10::List<c10::optional<at::Scalar>>(), std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

void decoder_layer_(at::Tensor x, std::vector<at::Tensor> norms, std::vector<at::Tensor> blocks,
                    std::vector<c10::optional<at::Tensor>> biases, std::vector<int64_t> dims,
                    double eps, at::Tensor cos, at::Tensor sin, at::Tensor k_arena,
                    at::Tensor v_arena, at::Tensor write_rows, at::Tensor q_cu,
                    at::Tensor own_base, at::Tensor own_start, at::Tensor prefix_start,
                    at::Tensor prefix_len, double scale, bool brgemm, bool int8_attention) {
  check_float_weights(blocks, biases);
  const LayerDims l = check_layer(x, norms, dims, write_rows);
  auto a = rms_norm(x, norms[0], eps);
  auto q = small_linear(a, blocks[0], l.hq * l.d, biases[0], NONE).view({l.m, l.hq, l.d});
  auto k = small_linear(a, blocks[1], l.hkv * l.d, biases[1], NONE).view({l.m, l.hkv, l.d});
  auto v = small_linear(a, blocks[2], l.hkv * l.d, biases[2], NONE).view({l.m, l.hkv, l.d});
  auto out = attend(q, k, v, l, norms, eps, cos, sin, k_arena, v_arena, write_rows, q_cu,
                    own_base, own_start, prefix_start, prefix_len, scale, brgemm, int8_attention);
  small_linear_into_(x, out, blocks[3], l.h, biases[3], ADD);
  auto b = rms_norm(x, norms[1], eps);
  auto g = small_linear_gate_up(b, blocks[4], blocks[5], l.f, biases[4], biases[5]);
  small_linear_into_(x, g, blocks[6], l.h, biases[6], ADD);
}

void decoder_layer_packed_(at::Tensor x, std::vector<at::Tensor> norms,
                           std::vector<at::Tensor> packed,
                           std::vector<c10::optional<at::Tensor>> biases,
                           std::vector<int64_t> dims, double eps, at::Tensor cos, at::Tensor sin,
                           at::Tensor k_arena, at::Tensor v_arena, at::Tensor write_rows,
                           at::Tensor q_cu, at::Tensor own_base, at::Tensor own_start,
                           at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                           bool brgemm, bool int8_attention) {
  check_float_weights(packed, biases);
  const LayerDims l = check_layer(x, norms, dims, write_rows);
  auto a = rms_norm(x, norms[0], eps);
  auto q = packed_linear(a, packed[0], biases[0]).view({l.m, l.hq, l.d});
  auto k = packed_linear(a, packed[1], biases[1]).view({l.m, l.hkv, l.d});
  auto v = packed_linear(a, packed[2], biases[2]).view({l.m, l.hkv, l.d});
  auto out = attend(q, k, v, l, norms, eps, cos, sin, k_arena, v_arena, write_rows, q_cu,
                    own_base, own_start, prefix_start, prefix_len, scale, brgemm, int8_attention);
  x.add_(packed_linear(out, packed[3], biases[3]));
  auto b = rms_norm(x, norms[1], eps);
  auto g = packed_linear(b, packed[4], biases[4]);
  at::silu_(g);
  g.mul_(packed_linear(b, packed[5], biases[5]));
  x.add_(packed_linear(g, packed[6], biases[6]));
}

void decoder_layer_int8_(at::Tensor x, std::vector<at::Tensor> norms,
                         std::vector<at::Tensor> packed, std::vector<at::Tensor> w_scales,
                         std::vector<at::Tensor> w_zeros, std::vector<at::Tensor> few_weights,
                         std::vector<at::Tensor> few_sums, int64_t few_rows,
                         c10::optional<at::Tensor> qkv_bias,
                         std::vector<int64_t> dims, double eps, at::Tensor cos, at::Tensor sin,
                         at::Tensor k_arena, at::Tensor v_arena, at::Tensor write_rows,
                         at::Tensor q_cu, at::Tensor own_base, at::Tensor own_start,
                         at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                         bool brgemm, bool int8_attention) {
  TORCH_CHECK(packed.size() == 5 && w_scales.size() == 5 && w_zeros.size() == 5,
              "int8 decoder layer: qkv, o, gate, up and down weights, scales and zero points");
  TORCH_CHECK(few_weights.size() == few_sums.size() &&
                  (few_weights.empty() || few_weights.size() == 5),
              "int8 decoder layer: the five plain weights and their sums for few rows, or none");
  const LayerDims l = check_layer(x, norms, dims, write_rows);
  const auto dtype = x.scalar_type();
  // as Int8Linear.unscaled: up to few_rows rows on the plain 7-bit weights (float32)
  const bool few = !few_weights.empty() && l.m <= few_rows && dtype == at::kFloat;
  auto linear = [&](const at::Tensor& x_q, int i) {
    return few ? int8_few_rows_linear(x_q, few_weights[i], few_sums[i], w_scales[i])
               : int8_linear_unscaled(x_q, packed[i], w_scales[i], w_zeros[i], dtype);
  };
  auto [a_q, a_s] = rms_norm_quantize(x, norms[0], eps);
  auto qkv = linear(a_q, 0);
  scale_rows_(qkv, a_s);
  if (qkv_bias) qkv.add_(qkv_bias->to(dtype));
  const int64_t nq = l.hq * l.d, nkv = l.hkv * l.d;
  auto q = qkv.narrow(1, 0, nq).view({l.m, l.hq, l.d});
  auto k = qkv.narrow(1, nq, nkv).view({l.m, l.hkv, l.d});
  auto v = qkv.narrow(1, nq + nkv, nkv).view({l.m, l.hkv, l.d});
  auto out = attend(q, k, v, l, norms, eps, cos, sin, k_arena, v_arena, write_rows, q_cu,
                    own_base, own_start, prefix_start, prefix_len, scale, brgemm, int8_attention);
  auto [o_q, o_s] = quantize_rows(out);
  scaled_add_(x, linear(o_q, 1), o_s);
  auto [b_q, b_s] = rms_norm_quantize(x, norms[1], eps);
  auto gate = linear(b_q, 2);
  auto up = linear(b_q, 3);
  auto [g_q, g_s] = silu_mul_quantize(gate, up, b_s);
  scaled_add_(x, linear(g_q, 4), g_s);
}
