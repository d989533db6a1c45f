// The vocabulary projection for a few rows, reduced as it is computed: each row's maximum logit,
// its first index (the greedy token) and, when asked, the log-sum-exp over the vocabulary.
//
// A reasoning step needs each row's greedy token, an answer row its log-sum-exp too; neither
// needs the [rows, vocab] logits. The lm_head is kept in small_linear_pack's blocks (64 output
// columns each, bfloat16 pairs along K); every thread takes one contiguous run of blocks, multiplies
// the rows by each block on oneDNN's brgemm micro-kernels (AMX where present) into float32 sums,
// and folds them into its running maximum, first argmax and sum of exponentials; the threads'
// partials are merged in vocabulary order, so ties go to the smallest id. The sums are the
// float32 sums of bfloat16 products: a float32 copy of the same weights times the same bfloat16
// rows computes the same products, in another order only.
#include "erank_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>

#include "avx512_exp2.h"

namespace {

using bf16 = c10::BFloat16;
using erank_cpu::exp2_ps;
using erank_cpu::LOG2E;
constexpr int64_t NB = erank_cpu::SMALL_LINEAR_BLOCK;
constexpr float MINUS_INF = -std::numeric_limits<float>::infinity();

// Fold one block's sums c [m][NB] (columns n0 .. n0 + cols) into each row's running maximum,
// first argmax and, with `lse`, sum of exp(logit - maximum).
void fold_block(const float* c, int64_t m, int64_t n0, int64_t cols, bool lse, float* best,
                int64_t* arg, float* sum) {
  for (int64_t r = 0; r < m; ++r) {
    const float* row = c + r * NB;
    __m512 top = _mm512_set1_ps(MINUS_INF);
    for (int64_t j = 0; j < cols; j += 16) {
      const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, cols - j)) - 1);
      top = _mm512_mask_max_ps(top, mask, top, _mm512_maskz_loadu_ps(mask, row + j));
    }
    const float block_max = _mm512_reduce_max_ps(top);
    if (lse) {
      const float new_max = std::max(best[r], block_max);
      const __m512 shift = _mm512_set1_ps(new_max * LOG2E);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, cols - j)) - 1);
        const __m512 t = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, row + j),
                                         _mm512_set1_ps(LOG2E), shift);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(mask, exp2_ps(t)));
      }
      sum[r] = sum[r] * std::exp2((best[r] - new_max) * LOG2E) + _mm512_reduce_add_ps(acc);
    }
    if (block_max > best[r]) {  // strict: an earlier block keeps a tie
      int64_t j = 0;
      while (row[j] != block_max) ++j;
      best[r] = block_max;
      arg[r] = n0 + j;
    }
  }
}

}  // namespace

std::vector<at::Tensor> vocab_head(at::Tensor x, at::Tensor blocks, int64_t n, bool lse) {
  TORCH_CHECK(small_linear_available(), "vocab_head: no bfloat16 brgemm on this CPU");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && blocks.scalar_type() == at::kBFloat16,
              "vocab_head: bfloat16 rows and weights");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "vocab_head: x [M, K], rows contiguous");
  TORCH_CHECK(n > 0 && blocks.dim() == 2 && blocks.is_contiguous() &&
                  blocks.size(0) == (n + NB - 1) / NB && blocks.size(1) == x.size(1) * NB,
              "vocab_head: weight blocks from small_linear_pack for K = ", x.size(1));
  const int64_t m = x.size(0), k = x.size(1), count = blocks.size(0);
  auto best_out = at::empty({m}, x.options().dtype(at::kFloat));
  auto arg_out = at::empty({m}, x.options().dtype(at::kLong));
  auto lse_out = at::empty({lse ? m : 0}, x.options().dtype(at::kFloat));
  if (m == 0) return {best_out, arg_out, lse_out};
  const bf16* a = x.data_ptr<bf16>();
  const bf16* w = blocks.data_ptr<bf16>();
  const int64_t lda = x.stride(0);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  std::vector<float> best(parts * m, MINUS_INF), sum(parts * m, 0.0f);
  std::vector<int64_t> arg(parts * m, 0);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> c(m * NB);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t blk = count * p / parts; blk < count * (p + 1) / parts; ++blk) {
        at::native::cpublas::brgemm(m, NB, k, lda, NB, NB, false, a, w + blk * k * NB, c.data(),
                                    true);
        fold_block(c.data(), m, blk * NB, std::min(NB, n - blk * NB), lse, best.data() + p * m,
                   arg.data() + p * m, sum.data() + p * m);
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
  float* best_p = best_out.data_ptr<float>();
  int64_t* arg_p = arg_out.data_ptr<int64_t>();
  for (int64_t r = 0; r < m; ++r) {  // the parts in vocabulary order: ties to the smallest id
    float top = best[r], total = sum[r];
    int64_t id = arg[r];
    for (int64_t p = 1; p < parts; ++p) {
      const float b = best[p * m + r];
      const float new_top = std::max(top, b);
      if (lse)
        total = total * std::exp(top - new_top) + sum[p * m + r] * std::exp(b - new_top);
      if (b > top) id = arg[p * m + r];
      top = new_top;
    }
    best_p[r] = top;
    arg_p[r] = id;
    if (lse) lse_out.data_ptr<float>()[r] = top + std::log(total);
  }
  return {best_out, arg_out, lse_out};
}

#else  // no AVX512-BF16: the score head's PyTorch path runs

std::vector<at::Tensor> vocab_head(at::Tensor x, at::Tensor, int64_t, bool) {
  TORCH_CHECK(false, "vocab_head: not built on this CPU");
  return {x};
}

#endif
