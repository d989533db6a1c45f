// RMSNorm in one pass per row (CPU): y = x / sqrt(mean(x^2) + eps) * weight, in float32,
// rounded once to x's dtype. (On CPU, torch's rms_norm runs as separate pow, mean, rsqrt and
// mul passes with casts between them.)
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "avx512_bf16.h"
#endif

namespace {

#if defined(__AVX512F__)
using erank_cpu::load16;
using erank_cpu::store16;
inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
#endif

template <typename T>
constexpr bool vectorised() {
#if defined(__AVX512BF16__)
  if (std::is_same_v<T, c10::BFloat16>) return true;
#endif
#if defined(__AVX512F__)
  if (std::is_same_v<T, float>) return true;
#endif
  return false;
}

template <typename T>
void norm_row(const T* x, const T* w, T* y, int64_t h, float eps) {
  int64_t i = 0;
  float sum = 0.0f;
  if constexpr (vectorised<T>()) {
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= h; i += 16) {
      const __m512 v = load16(x + i);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    sum = _mm512_reduce_add_ps(acc);
  }
  for (; i < h; ++i) sum += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
  i = 0;
  if constexpr (vectorised<T>()) {
    const __m512 s = _mm512_set1_ps(inv);
    for (; i + 16 <= h; i += 16)
      store16(y + i, _mm512_mul_ps(_mm512_mul_ps(load16(x + i), s), load16(w + i)));
  }
  for (; i < h; ++i)
    y[i] = static_cast<T>(static_cast<float>(x[i]) * inv * static_cast<float>(w[i]));
}

}  // namespace

// x [N, H] (rows may be strided, last dim contiguous), weight [H] of x's dtype -> y [N, H].
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x: [N, H], last dim contiguous");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight: [H], contiguous, x's dtype");
  auto y = at::empty({x.size(0), x.size(1)}, x.options());
  const int64_t n = x.size(0), h = x.size(1), stride = x.stride(0);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        norm_row<T>(xp + r * stride, wp, yp + r * h, h, static_cast<float>(eps));
    });
  };
  if (x.scalar_type() == at::kFloat) run(float{});
  else if (x.scalar_type() == at::kBFloat16) run(c10::BFloat16{});
  else TORCH_CHECK(false, "rms_norm: float32 or bfloat16, got ", x.scalar_type());
  return y;
}
