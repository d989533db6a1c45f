// Linear layers for a few rows (decode steps) in bfloat16 on oneDNN's batch-reduce GEMM
// micro-kernels (ATen's cpublas::brgemm), which run on AMX tiles where the CPU has them.
//
// At decode sizes a linear layer streams its weights once and does little arithmetic with each
// of them, so what counts is reading the weights at the memory's speed. The weights are kept in
// blocks of NB output columns, each contiguous in the layout the micro-kernels read (pairs of
// bfloat16 along K, "VNNI": [K/2][NB][2]); the threads take blocks in turn, multiply the rows
// by each in float32, apply the epilogue (bias; SiLU; a product with, or a sum into, another
// tensor) and round once to bfloat16, as oneDNN's own epilogues do.
#include "erank_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>

#include "linear_epilogue.h"

namespace {

using bf16 = c10::BFloat16;

constexpr int64_t NB = erank_cpu::SMALL_LINEAR_BLOCK;  // output columns per block

using erank_cpu::Epilogue;
using erank_cpu::NONE;
using erank_cpu::SILU;
using erank_cpu::MUL;
using erank_cpu::ADD;

// One block's float32 product c [M][NB] -> out[:, n0 : n0 + cols] (bfloat16) through the
// epilogue; `other` (MUL, ADD) is read at the same place and is where the result goes.
void finish_block(const float* c, int64_t m, int64_t n0, int64_t cols, const float* bias,
                  Epilogue epilogue, bf16* out, int64_t ldo) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < cols; j += 16) {
      const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, cols - j)) - 1);
      erank_cpu::finish16(_mm512_loadu_ps(c + r * NB + j),
                          bias != nullptr ? bias + n0 + j : nullptr, epilogue,
                          out + r * ldo + n0 + j, mask);
    }
  }
}

void run(const at::Tensor& x, const at::Tensor& blocks, int64_t n, const float* bias,
         Epilogue epilogue, bf16* out, int64_t ldo) {
  const int64_t m = x.size(0), k = x.size(1), count = blocks.size(0);
  const bf16* a = x.data_ptr<bf16>();
  const bf16* w = blocks.data_ptr<bf16>();
  const int64_t lda = x.stride(0);
  if (m == 0) return;  // no rows: nothing to multiply (the micro-kernels take M >= 1)
  if (tile_linear_applies(m, k)) return tile_linear(x, blocks, n, bias, epilogue, out, ldo);
  at::parallel_for(0, count, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> c(m * NB);
    for (int64_t blk = b0; blk < b1; ++blk) {
      at::native::cpublas::brgemm(m, NB, k, lda, NB, NB, false, a, w + blk * k * NB, c.data(),
                                  true);
      finish_block(c.data(), m, blk * NB, std::min(NB, n - blk * NB), bias, epilogue, out, ldo);
    }
    at::native::cpublas::brgemm_release(true);
  });
}

void check(const at::Tensor& x, const at::Tensor& blocks, int64_t n,
           const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(small_linear_available(), "small_linear: no bfloat16 brgemm on this CPU");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && blocks.scalar_type() == at::kBFloat16,
              "small_linear: bfloat16 rows and weights");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "small_linear: x [M, K], rows contiguous");
  TORCH_CHECK(blocks.dim() == 2 && blocks.is_contiguous() && blocks.size(0) == (n + NB - 1) / NB &&
                  blocks.size(1) == x.size(1) * NB,
              "small_linear: weight blocks from small_linear_pack for K = ", x.size(1));
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "small_linear: bias float32 [N]");
}

}  // namespace

bool small_linear_available() { return at::native::cpublas::could_pack(at::kBFloat16); }

at::Tensor small_linear_pack(at::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16, "small_linear_pack: bf16 [N, K]");
  TORCH_CHECK(w.size(1) % 2 == 0, "small_linear_pack: K must be even (pairs along K)");
  const int64_t n = w.size(0), k = w.size(1), count = (n + NB - 1) / NB;
  auto src = w.contiguous();
  auto out = at::empty({count, k * NB}, w.options());
  const bf16* s = src.data_ptr<bf16>();
  bf16* d = out.data_ptr<bf16>();
  std::memset(d, 0, sizeof(bf16) * count * k * NB);  // columns past N stay 0
  for (int64_t col = 0; col < n; ++col) {
    bf16* blk = d + (col / NB) * k * NB + (col % NB) * 2;
    for (int64_t p = 0; p < k / 2; ++p) {
      blk[p * NB * 2] = s[col * k + 2 * p];
      blk[p * NB * 2 + 1] = s[col * k + 2 * p + 1];
    }
  }
  return out;
}

at::Tensor small_linear(at::Tensor x, at::Tensor blocks, int64_t n, c10::optional<at::Tensor> bias,
                        int64_t epilogue) {
  check(x, blocks, n, bias);
  TORCH_CHECK(epilogue == NONE || epilogue == SILU, "small_linear: epilogue 0 (none) or 1 (silu)");
  auto out = at::empty({x.size(0), n}, x.options());
  run(x, blocks, n, bias ? bias->data_ptr<float>() : nullptr, static_cast<Epilogue>(epilogue),
      out.data_ptr<bf16>(), n);
  return out;
}

void small_linear_into_(at::Tensor other, at::Tensor x, at::Tensor blocks, int64_t n,
                        c10::optional<at::Tensor> bias, int64_t epilogue) {
  check(x, blocks, n, bias);
  TORCH_CHECK(epilogue == MUL || epilogue == ADD,
              "small_linear_into_: epilogue 2 (mul) or 3 (add)");
  TORCH_CHECK(other.scalar_type() == at::kBFloat16 && other.dim() == 2 &&
                  other.size(0) == x.size(0) && other.size(1) == n && other.stride(1) == 1,
              "small_linear_into_: other bf16 [M, N], rows contiguous");
  run(x, blocks, n, bias ? bias->data_ptr<float>() : nullptr, static_cast<Epilogue>(epilogue),
      other.data_ptr<bf16>(), other.stride(0));
}

at::Tensor small_linear_gate_up(at::Tensor x, at::Tensor gate_blocks, at::Tensor up_blocks,
                                int64_t n, c10::optional<at::Tensor> gate_bias,
                                c10::optional<at::Tensor> up_bias) {
  check(x, gate_blocks, n, gate_bias);
  check(x, up_blocks, n, up_bias);
  const float* gb = gate_bias ? gate_bias->data_ptr<float>() : nullptr;
  const float* ub = up_bias ? up_bias->data_ptr<float>() : nullptr;
  auto out = at::empty({x.size(0), n}, x.options());
  if (tile_linear_applies(x.size(0), x.size(1))) {
    tile_linear_gate_up(x, gate_blocks, up_blocks, n, gb, ub, out.data_ptr<bf16>());
  } else {
    run(x, gate_blocks, n, gb, SILU, out.data_ptr<bf16>(), n);
    run(x, up_blocks, n, ub, MUL, out.data_ptr<bf16>(), n);
  }
  return out;
}

#else  // no AVX512-BF16: oneDNN's inner product runs every linear layer

bool small_linear_available() { return false; }

at::Tensor small_linear_pack(at::Tensor w) {
  TORCH_CHECK(false, "small_linear: not built on this CPU");
  return w;
}

at::Tensor small_linear(at::Tensor x, at::Tensor, int64_t, c10::optional<at::Tensor>, int64_t) {
  TORCH_CHECK(false, "small_linear: not built on this CPU");
  return x;
}

void small_linear_into_(at::Tensor, at::Tensor, at::Tensor, int64_t, c10::optional<at::Tensor>,
                        int64_t) {
  TORCH_CHECK(false, "small_linear: not built on this CPU");
}

at::Tensor small_linear_gate_up(at::Tensor x, at::Tensor, at::Tensor, int64_t,
                                c10::optional<at::Tensor>, c10::optional<at::Tensor>) {
  TORCH_CHECK(false, "small_linear: not built on this CPU");
  return x;
}

#endif
