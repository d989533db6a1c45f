// int8 linear layers for a few rows (decode steps) on an AVX2 CPU without VNNI:
//   out[m, n] = (sum_k (x_q[m, k] - 128) * w_q[n, k]) * w_scale[n]   (float32)
// the same exact integer sums, and the same single rounding, as oneDNN's u8 x s8 GEMM of
// ops/int8_linear.py (Int8Linear.unscaled), for weights of at most 7 bits (|w| <= 63: the
// weight levels ops/int8_linear.py picks where there is no VNNI).
//
// At decode sizes a linear layer streams its weights once and does little arithmetic with each;
// oneDNN's AVX2 int8 GEMM spends 130-300 us on SmolLM2's layers at 1-8 rows (a 2-core Zen 3:
// 2-4 GB/s of weights), slower than its float32 GEMM on four times the bytes. Here each thread
// takes blocks of NR weight rows in turn; a block's rows (NR x K bytes, at most a few KB) are
// read from memory once and multiplied, 32 bytes at a time, by every activation row:
// vpmaddubsw (u8 x s8 -> sums of two products in 16 bits, which 7-bit weights cannot saturate:
// 255 * 63 * 2 < 32767), vpmaddwd by ones (-> 32-bit sums of four), vpaddd. The zero point is
// taken off after the sums: sum (x - 128) w = sum x w - 128 sum w, with each weight row's sum
// computed once (Int8Linear.few_rows_sums).
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t ZERO_POINT = 128;

#if defined(__AVX2__)
constexpr int64_t NR = 4;  // weight rows per block (one output column each)
constexpr int64_t MR = 2;  // activation rows per pass over a block: 8 accumulators

// The four 32-bit sums of acc[0..3]'s eight lanes each.
inline __m128i sum4(const __m256i* acc) {
  const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]),
                                      _mm256_hadd_epi32(acc[2], acc[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

// Rows [m0, m0 + R) of x against weight rows [n0, n0 + NR): K a multiple of 32.
template <int R>
void block(const uint8_t* x, int64_t ldx, const int8_t* w, int64_t k, const int32_t* sums,
           const float* scale, int64_t n0, int64_t m0, float* out, int64_t ldo) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][NR];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm256_setzero_si256();
  const int8_t* wn = w + n0 * k;
  for (int64_t kk = 0; kk < k; kk += 32) {
    __m256i wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wn + j * k + kk));
    for (int r = 0; r < R; ++r) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + (m0 + r) * ldx + kk));
      for (int j = 0; j < NR; ++j)
        acc[r][j] = _mm256_add_epi32(
            acc[r][j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[j]), ones));
    }
  }
  const __m128i zero_point_sums =
      _mm_mullo_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sums + n0)),
                      _mm_set1_epi32(ZERO_POINT));
  const __m128 s = _mm_loadu_ps(scale + n0);
  for (int r = 0; r < R; ++r) {
    const __m128i exact = _mm_sub_epi32(sum4(acc[r]), zero_point_sums);
    _mm_storeu_ps(out + (m0 + r) * ldo + n0, _mm_mul_ps(_mm_cvtepi32_ps(exact), s));
  }
}
#endif

// Output column n of rows [0, m), one product at a time (K not a multiple of 32, or N's tail).
void column(const uint8_t* x, int64_t ldx, const int8_t* w, int64_t k, const int32_t* sums,
            const float* scale, int64_t n, int64_t m, float* out, int64_t ldo) {
  for (int64_t r = 0; r < m; ++r) {
    int32_t acc = 0;
    for (int64_t kk = 0; kk < k; ++kk) acc += int32_t(x[r * ldx + kk]) * w[n * k + kk];
    out[r * ldo + n] = float(acc - int32_t(ZERO_POINT) * sums[n]) * scale[n];
  }
}

}  // namespace

bool int8_few_rows_available() {
#if defined(__AVX2__)
  return true;
#else
  return false;
#endif
}

at::Tensor int8_few_rows_linear(at::Tensor x_q, at::Tensor w_q, at::Tensor sums,
                                at::Tensor scale) {
  TORCH_CHECK(x_q.dim() == 2 && x_q.scalar_type() == at::kByte && x_q.stride(1) == 1,
              "x_q: uint8 [M, K], rows contiguous");
  TORCH_CHECK(w_q.dim() == 2 && w_q.scalar_type() == at::kChar && w_q.is_contiguous(),
              "w_q: int8 [N, K] contiguous");
  const int64_t m = x_q.size(0), k = x_q.size(1), n = w_q.size(0);
  TORCH_CHECK(w_q.size(1) == k, "x_q [M, ", k, "] against w_q [N, ", w_q.size(1), "]");
  TORCH_CHECK(sums.scalar_type() == at::kInt && sums.is_contiguous() && sums.numel() == n,
              "sums: int32 [N], w_q's row sums");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n,
              "scale: float32 [N]");
  auto out = at::empty({m, n}, x_q.options().dtype(at::kFloat));
  const auto* x = x_q.data_ptr<uint8_t>();
  const auto* w = w_q.data_ptr<int8_t>();
  const auto* s = sums.data_ptr<int32_t>();
  const auto* sc = scale.data_ptr<float>();
  auto* o = out.data_ptr<float>();
  const int64_t ldx = x_q.stride(0);
#if defined(__AVX2__)
  if (k % 32 == 0) {
    const int64_t blocks = n / NR;
    at::parallel_for(0, blocks, 8, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t r = 0;
        for (; r + MR <= m; r += MR) block<MR>(x, ldx, w, k, s, sc, b * NR, r, o, n);
        if (r < m) block<1>(x, ldx, w, k, s, sc, b * NR, r, o, n);
      }
    });
    for (int64_t c = blocks * NR; c < n; ++c) column(x, ldx, w, k, s, sc, c, m, o, n);
    return out;
  }
#endif
  at::parallel_for(0, n, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) column(x, ldx, w, k, s, sc, c, m, o, n);
  });
  return out;
}
