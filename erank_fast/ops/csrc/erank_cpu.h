// erank_fast's C++ CPU kernels: one declaration per op; the bindings are in bindings.cpp.
// Only ATen's core headers are included, so a first build takes seconds, not minutes.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <string>
#include <tuple>
#include <vector>

std::vector<at::Tensor> decode_attention(at::Tensor q, at::Tensor k, at::Tensor v,
                                         at::Tensor prefix_start, at::Tensor prefix_len,
                                         at::Tensor own_base, at::Tensor own_len, double scale);

bool shared_prefix_attention_supports(std::string dtype);
bool shared_prefix_attention_int8_available();
bool shared_prefix_attention_bf16_arena();
at::Tensor shared_prefix_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor q_cu,
                                   at::Tensor own_base, at::Tensor own_start,
                                   at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                                   bool int8_attention);

// the same for some documents of the step only, into their rows of out (not an operator: the
// brgemm kernel hands it the documents with one new token)
void shared_prefix_attention_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& q_cu, const at::Tensor& own_base,
                                const at::Tensor& own_start, const at::Tensor& prefix_start,
                                const at::Tensor& prefix_len, double scale,
                                const std::vector<int64_t>& docs, at::Tensor& out,
                                bool int8_attention = false);

// the same in bfloat16 with its two products on AMX tiles: raw tile instructions where the
// process may use them and `tiles` (shared_prefix_attention_brgemm.cpp), else oneDNN's brgemm
// micro-kernels (also AMX); the same results either way
bool shared_prefix_attention_brgemm_available();
at::Tensor shared_prefix_attention_brgemm(at::Tensor q, at::Tensor k, at::Tensor v,
                                          at::Tensor q_cu, at::Tensor own_base,
                                          at::Tensor own_start, at::Tensor prefix_start,
                                          at::Tensor prefix_len, double scale, bool tiles);

void rotary_(at::Tensor q, at::Tensor k, at::Tensor cos, at::Tensor sin);

// a step's new K and V rows copied into the K/V arena rows `rows` (arena_write.cpp)
void arena_write_(at::Tensor k_arena, at::Tensor v_arena, at::Tensor rows, at::Tensor k,
                  at::Tensor v);

at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);

// int8 linear layers' row-wise work (int8_rows.cpp): uint8 activations (zero point 128) with a
// float32 scale per row, and the bfloat16 GEMM outputs scaled back per row
std::tuple<at::Tensor, at::Tensor> quantize_rows(at::Tensor x);
std::tuple<at::Tensor, at::Tensor> rms_norm_quantize(at::Tensor x, at::Tensor weight, double eps);
std::tuple<at::Tensor, at::Tensor> silu_mul_quantize(at::Tensor g, at::Tensor u, at::Tensor s);
void scale_rows_(at::Tensor y, at::Tensor s);
void scaled_add_(at::Tensor residual, at::Tensor y, at::Tensor s);
// the same GEMM as oneDNN's int8 one at a few rows, for weights of at most 7 bits
// (int8_few_rows.cpp): float32 (x_q - 128) @ w_q^T * scale, sums = w_q's row sums (int32)
bool int8_few_rows_available();
at::Tensor int8_few_rows_linear(at::Tensor x_q, at::Tensor w_q, at::Tensor sums,
                                at::Tensor scale);

namespace erank_cpu {
// AMX tiles (tile_linear.cpp): whether this build has them and Linux grants this process their
// state; load_tile_config sets all eight tiles to 16 rows of 64 bytes (palette 1), the
// layout of tile_linear's and the prefill attention's kernels: tiles 0-3 float32 accumulators
// (16 x 16), 4-5 the left operand (16 rows x 32 bfloat16), 6-7 the right one (16 rows of 16
// bfloat16 pairs)
bool tiles_permitted();
void load_tile_config();
constexpr int64_t SMALL_LINEAR_BLOCK = 64;  // output columns per block of small_linear_pack
// small_linear's epilogues (PackedLinear.NONE .. ADD in ops/packed_linear.py)
enum Epilogue : int64_t { NONE = 0, SILU = 1, MUL = 2, ADD = 3 };
}

// bfloat16 linear layers for a few rows on oneDNN's brgemm micro-kernels (small_linear.cpp):
// weights packed once by small_linear_pack; epilogue 0 none, 1 SiLU (small_linear), 2 a product
// with, 3 a sum into `other`, in place (small_linear_into_)
bool small_linear_available();
at::Tensor small_linear_pack(at::Tensor w);
at::Tensor small_linear(at::Tensor x, at::Tensor blocks, int64_t n, c10::optional<at::Tensor> bias,
                        int64_t epilogue);
void small_linear_into_(at::Tensor other, at::Tensor x, at::Tensor blocks, int64_t n,
                        c10::optional<at::Tensor> bias, int64_t epilogue);
// silu(x @ gate^T + gate_bias), rounded to bfloat16, times (x @ up^T + up_bias): the MLP's two
// projections on their blocks in one call (small_linear's SiLU and product epilogues' result)
at::Tensor small_linear_gate_up(at::Tensor x, at::Tensor gate_blocks, at::Tensor up_blocks,
                                int64_t n, c10::optional<at::Tensor> gate_bias,
                                c10::optional<at::Tensor> up_bias);

// the same blocks for steps of many rows on AMX tiles, the epilogue overlapping the products
// (tile_linear.cpp; small_linear's functions call them where tile_linear_applies)
bool tile_linear_applies(int64_t m, int64_t k);
void tile_linear(const at::Tensor& x, const at::Tensor& blocks, int64_t n, const float* bias,
                 erank_cpu::Epilogue epilogue, c10::BFloat16* out, int64_t ldo);
void tile_linear_gate_up(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                         int64_t n, const float* gate_bias, const float* up_bias,
                         c10::BFloat16* out);

// the vocabulary projection on small_linear_pack's blocks, reduced per row as it is computed
// (vocab_head.cpp): [maximum logit (float32), its first index (int64), log-sum-exp (float32;
// empty unless `lse`)]
std::vector<at::Tensor> vocab_head(at::Tensor x, at::Tensor blocks, int64_t n, bool lse);

// one decoder layer of a bfloat16 step of a few rows, the ops above called in the Python
// layer's order (decoder_layer.cpp); x is updated in place; int8_attention: the attention's
// (shared_prefix_attention)
void decoder_layer_(at::Tensor x, std::vector<at::Tensor> norms, std::vector<at::Tensor> blocks,
                    std::vector<c10::optional<at::Tensor>> biases, std::vector<int64_t> dims,
                    double eps, at::Tensor cos, at::Tensor sin, at::Tensor k_arena,
                    at::Tensor v_arena, at::Tensor write_rows, at::Tensor q_cu,
                    at::Tensor own_base, at::Tensor own_start, at::Tensor prefix_start,
                    at::Tensor prefix_len, double scale, bool brgemm, bool int8_attention);
// the same on oneDNN's packed weights (float32 layers of ops/packed_linear.py), the Python
// layer's oneDNN linear, SiLU, product and sums in its order
void decoder_layer_packed_(at::Tensor x, std::vector<at::Tensor> norms,
                           std::vector<at::Tensor> packed,
                           std::vector<c10::optional<at::Tensor>> biases,
                           std::vector<int64_t> dims, double eps, at::Tensor cos, at::Tensor sin,
                           at::Tensor k_arena, at::Tensor v_arena, at::Tensor write_rows,
                           at::Tensor q_cu, at::Tensor own_base, at::Tensor own_start,
                           at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                           bool brgemm, bool int8_attention);
// the same on int8 weights (ops/int8_linear.py: q, k and v as one; oneDNN's int8 GEMMs and the
// row kernels around them in the Python layer's order); biases on q, k and v only
void decoder_layer_int8_(at::Tensor x, std::vector<at::Tensor> norms,
                         std::vector<at::Tensor> packed, std::vector<at::Tensor> w_scales,
                         std::vector<at::Tensor> w_zeros, std::vector<at::Tensor> few_weights,
                         std::vector<at::Tensor> few_sums, int64_t few_rows,
                         c10::optional<at::Tensor> qkv_bias,
                         std::vector<int64_t> dims, double eps, at::Tensor cos, at::Tensor sin,
                         at::Tensor k_arena, at::Tensor v_arena, at::Tensor write_rows,
                         at::Tensor q_cu, at::Tensor own_base, at::Tensor own_start,
                         at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                         bool brgemm, bool int8_attention);
