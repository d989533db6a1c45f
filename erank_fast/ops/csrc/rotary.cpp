// Rotary position embedding applied in place to q and k in one pass (CPU): for each token and
// head, with a = x[:D/2] and b = x[D/2:], a' = a cos - b sin and b' = b cos + a sin, computed
// in float32 and rounded once to the tensors' dtype. cos and sin are float32 [N, D/2] (the
// checkpoint's frequencies and attention scaling already applied).
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "avx512_bf16.h"
#endif

namespace {

template <typename T>
inline void rotate_row(T* x, const float* cos, const float* sin, int64_t half) {
  int64_t d = 0;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    for (; d + 16 <= half; d += 16) {
      const __m512 a = erank_cpu::load16(x + d), b = erank_cpu::load16(x + half + d);
      const __m512 c = _mm512_loadu_ps(cos + d), s = _mm512_loadu_ps(sin + d);
      const __m512 ra = _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s));
      const __m512 rb = _mm512_fmadd_ps(b, c, _mm512_mul_ps(a, s));
      erank_cpu::store16(x + d, ra);
      erank_cpu::store16(x + half + d, rb);
    }
  }
#endif
  for (; d < half; ++d) {
    const float a = static_cast<float>(x[d]), b = static_cast<float>(x[half + d]);
    x[d] = static_cast<T>(a * cos[d] - b * sin[d]);
    x[half + d] = static_cast<T>(b * cos[d] + a * sin[d]);
  }
}

template <typename T>
void rotate(at::Tensor& x, const float* cos, const float* sin, int64_t half, int64_t n) {
  T* base = x.data_ptr<T>();
  const int64_t heads = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t h = 0; h < heads; ++h)
        rotate_row<T>(base + t * s0 + h * s1, cos + t * half, sin + t * half, half);
  });
}

}  // namespace

// q [N, Hq, D], k [N, Hkv, D] (last dim contiguous, any other strides: views of a fused QKV
// projection are fine), cos/sin float32 [N, D/2]; q and k are rotated in place.
void rotary_(at::Tensor q, at::Tensor k, at::Tensor cos, at::Tensor sin) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == k.size(2),
              "q [N,Hq,D], k [N,Hkv,D]");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "last dim contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k of one dtype");
  const int64_t n = q.size(0), half = q.size(2) / 2;
  TORCH_CHECK(q.size(2) % 2 == 0, "even head_dim");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                  cos.is_contiguous() && sin.is_contiguous() && cos.numel() == n * half &&
                  sin.numel() == n * half,
              "cos, sin: float32 [N, D/2], contiguous");
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  if (q.scalar_type() == at::kFloat) {
    rotate<float>(q, c, s, half, n);
    rotate<float>(k, c, s, half, n);
  } else if (q.scalar_type() == at::kBFloat16) {
    rotate<c10::BFloat16>(q, c, s, half, n);
    rotate<c10::BFloat16>(k, c, s, half, n);
  } else {
    TORCH_CHECK(false, "rotary_: float32 or bfloat16, got ", q.scalar_type());
  }
}
