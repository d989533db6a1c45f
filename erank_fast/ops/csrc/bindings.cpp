// erank_fast's C++ CPU kernels as torch operators (torch.ops.erank_fast_cpu.*), so profiles,
// torch.compile and the dispatcher see them (built and loaded by ops/cpu_extension.py).
#include "erank_cpu.h"

#include <torch/library.h>

TORCH_LIBRARY(erank_fast_cpu, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor prefix_start, Tensor prefix_len, "
        "Tensor own_base, Tensor own_len, float scale) -> Tensor[]");
  m.def("shared_prefix_attention(Tensor q, Tensor k, Tensor v, Tensor q_cu, Tensor own_base, "
        "Tensor own_start, Tensor prefix_start, Tensor prefix_len, float scale, "
        "bool int8_attention=False) -> Tensor");
  // whether shared_prefix_attention's int8_attention runs here (AVX512-VNNI; float32 only)
  m.def("shared_prefix_attention_int8_available() -> bool",
        &shared_prefix_attention_int8_available);
  m.def("shared_prefix_attention_bf16_arena() -> bool", &shared_prefix_attention_bf16_arena);
  m.def("shared_prefix_attention_brgemm(Tensor q, Tensor k, Tensor v, Tensor q_cu, "
        "Tensor own_base, Tensor own_start, Tensor prefix_start, Tensor prefix_len, "
        "float scale, bool tiles=True) -> Tensor");
  // whether this CPU has oneDNN's bfloat16 brgemm (AMX) for shared_prefix_attention_brgemm
  m.def("shared_prefix_attention_brgemm_available() -> bool",
        &shared_prefix_attention_brgemm_available);
  m.def("rotary_(Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin) -> ()");
  m.def("arena_write_(Tensor(a!) k_arena, Tensor(b!) v_arena, Tensor rows, Tensor k, Tensor v) "
        "-> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("quantize_rows(Tensor x) -> (Tensor, Tensor)");
  m.def("rms_norm_quantize(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("silu_mul_quantize(Tensor g, Tensor u, Tensor s) -> (Tensor, Tensor)");
  m.def("scale_rows_(Tensor(a!) y, Tensor s) -> ()");
  m.def("scaled_add_(Tensor(a!) residual, Tensor y, Tensor s) -> ()");
  // int8 linear layers at a few rows without VNNI (int8_few_rows.cpp): AVX2 built in
  m.def("int8_few_rows_available() -> bool", &int8_few_rows_available);
  m.def("int8_few_rows_linear(Tensor x_q, Tensor w_q, Tensor sums, Tensor scale) -> Tensor");
  // whether this CPU has oneDNN's bfloat16 brgemm for small_linear (decode-sized linear layers)
  m.def("small_linear_available() -> bool", &small_linear_available);
  m.def("small_linear_pack(Tensor w) -> Tensor");
  m.def("small_linear(Tensor x, Tensor blocks, int n, Tensor? bias, int epilogue) -> Tensor");
  m.def("small_linear_into_(Tensor(a!) other, Tensor x, Tensor blocks, int n, Tensor? bias, "
        "int epilogue) -> ()");
  m.def("small_linear_gate_up(Tensor x, Tensor gate_blocks, Tensor up_blocks, int n, "
        "Tensor? gate_bias, Tensor? up_bias) -> Tensor");
  // whether a step of m rows with k input features takes the AMX tiles (tile_linear.cpp)
  m.def("tile_linear_applies(int m, int k) -> bool", &tile_linear_applies);
  m.def("vocab_head(Tensor x, Tensor blocks, int n, bool lse) -> Tensor[]");
  m.def("decoder_layer_(Tensor(a!) x, Tensor[] norms, Tensor[] blocks, Tensor?[] biases, "
        "int[] dims, float eps, Tensor cos, Tensor sin, Tensor(b!) k_arena, Tensor(c!) v_arena, "
        "Tensor write_rows, Tensor q_cu, Tensor own_base, Tensor own_start, Tensor prefix_start, "
        "Tensor prefix_len, float scale, bool brgemm, bool int8_attention=False) -> ()");
  m.def("decoder_layer_packed_(Tensor(a!) x, Tensor[] norms, Tensor[] packed, Tensor?[] biases, "
        "int[] dims, float eps, Tensor cos, Tensor sin, Tensor(b!) k_arena, Tensor(c!) v_arena, "
        "Tensor write_rows, Tensor q_cu, Tensor own_base, Tensor own_start, Tensor prefix_start, "
        "Tensor prefix_len, float scale, bool brgemm, bool int8_attention=False) -> ()");
  m.def("decoder_layer_int8_(Tensor(a!) x, Tensor[] norms, Tensor[] packed, Tensor[] w_scales, "
        "Tensor[] w_zeros, Tensor[] few_weights, Tensor[] few_sums, int few_rows, "
        "Tensor? qkv_bias, int[] dims, float eps, Tensor cos, Tensor sin, "
        "Tensor(b!) k_arena, Tensor(c!) v_arena, Tensor write_rows, Tensor q_cu, "
        "Tensor own_base, Tensor own_start, Tensor prefix_start, Tensor prefix_len, float scale, "
        "bool brgemm, bool int8_attention=False) -> ()");
  // whether shared_prefix_attention was built for a dtype ("float32", "bfloat16") on this CPU
  m.def("shared_prefix_attention_supports(str dtype) -> bool",
        &shared_prefix_attention_supports);
}

TORCH_LIBRARY_IMPL(erank_fast_cpu, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("shared_prefix_attention", &shared_prefix_attention);
  m.impl("shared_prefix_attention_brgemm", &shared_prefix_attention_brgemm);
  m.impl("rotary_", &rotary_);
  m.impl("arena_write_", &arena_write_);
  m.impl("rms_norm", &rms_norm);
  m.impl("quantize_rows", &quantize_rows);
  m.impl("rms_norm_quantize", &rms_norm_quantize);
  m.impl("silu_mul_quantize", &silu_mul_quantize);
  m.impl("scale_rows_", &scale_rows_);
  m.impl("scaled_add_", &scaled_add_);
  m.impl("int8_few_rows_linear", &int8_few_rows_linear);
  m.impl("small_linear_pack", &small_linear_pack);
  m.impl("small_linear", &small_linear);
  m.impl("small_linear_into_", &small_linear_into_);
  m.impl("small_linear_gate_up", &small_linear_gate_up);
  m.impl("vocab_head", &vocab_head);
  m.impl("decoder_layer_", &decoder_layer_);
  m.impl("decoder_layer_packed_", &decoder_layer_packed_);
  m.impl("decoder_layer_int8_", &decoder_layer_int8_);
}

// oneDNN's packed weights are MkldnnCPU tensors, so a call given them dispatches there.
TORCH_LIBRARY_IMPL(erank_fast_cpu, MkldnnCPU, m) {
  m.impl("decoder_layer_packed_", &decoder_layer_packed_);
  m.impl("decoder_layer_int8_", &decoder_layer_int8_);
}
