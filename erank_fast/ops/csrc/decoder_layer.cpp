// One decoder layer of a bfloat16 step of a few rows (decode) in one call: the same kernels, in
// the same order, as the Python layer on the small-batch blocks (models/decoder.py), without a
// Python call and a dispatch per op. On a 2-core Xeon a decode step of SmolLM2 spent ~6 ms of
// ~24 between its 30 layers' ~400 op calls; here a layer is one call.
//   a = rms_norm(x); q, k, v = a @ Wq, Wk, Wv (+ bias); [q, k = rms_norm per head]; RoPE(q, k);
//   the step's real rows of k, v into the arena; out = shared-prefix attention (the vector
//   kernel, or the brgemm one for prefill-like steps); x += out @ Wo;
//   b = rms_norm(x); x += (silu(b @ Wg) * (b @ Wu)) @ Wd.
#include "erank_cpu.h"

using erank_cpu::ADD;
using erank_cpu::NONE;

void decoder_layer_(at::Tensor x, std::vector<at::Tensor> norms, std::vector<at::Tensor> blocks,
                    std::vector<c10::optional<at::Tensor>> biases, std::vector<int64_t> dims,
                    double eps, at::Tensor cos, at::Tensor sin, at::Tensor k_arena,
                    at::Tensor v_arena, at::Tensor write_rows, at::Tensor q_cu,
                    at::Tensor own_base, at::Tensor own_start, at::Tensor prefix_start,
                    at::Tensor prefix_len, double scale, bool brgemm) {
  TORCH_CHECK(norms.size() == 2 || norms.size() == 4, "decoder_layer_: 2 norms (4 with q/k norms)");
  TORCH_CHECK(blocks.size() == 7 && biases.size() == 7, "decoder_layer_: q, k, v, o, gate, up, "
              "down blocks and biases");
  TORCH_CHECK(dims.size() == 4, "decoder_layer_: dims [heads, kv heads, head dim, intermediate]");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "decoder_layer_: x [M, H] contiguous");
  const int64_t m = x.size(0), h = x.size(1), hq = dims[0], hkv = dims[1], d = dims[2];
  const int64_t f = dims[3], n = write_rows.numel();
  TORCH_CHECK(n <= m, "decoder_layer_: more rows to write than rows");
  auto a = rms_norm(x, norms[0], eps);
  auto q = small_linear(a, blocks[0], hq * d, biases[0], NONE).view({m, hq, d});
  auto k = small_linear(a, blocks[1], hkv * d, biases[1], NONE).view({m, hkv, d});
  auto v = small_linear(a, blocks[2], hkv * d, biases[2], NONE).view({m, hkv, d});
  if (norms.size() == 4) {
    q = rms_norm(q.reshape({m * hq, d}), norms[2], eps).view({m, hq, d});
    k = rms_norm(k.reshape({m * hkv, d}), norms[3], eps).view({m, hkv, d});
  }
  rotary_(q, k, cos, sin);
  arena_write_(k_arena, v_arena, write_rows, k.narrow(0, 0, n), v.narrow(0, 0, n));
  auto out = brgemm ? shared_prefix_attention_brgemm(q, k_arena, v_arena, q_cu, own_base,
                                                     own_start, prefix_start, prefix_len, scale,
                                                     true)
                    : shared_prefix_attention(q, k_arena, v_arena, q_cu, own_base, own_start,
                                              prefix_start, prefix_len, scale);
  small_linear_into_(x, out.view({m, hq * d}), blocks[3], h, biases[3], ADD);
  auto b = rms_norm(x, norms[1], eps);
  auto g = small_linear_gate_up(b, blocks[4], blocks[5], f, biases[4], biases[5]);
  small_linear_into_(x, g, blocks[6], h, biases[6], ADD);
}
