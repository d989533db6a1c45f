// 2^t on 16 floats with AVX-512 (the CPU attention kernels' softmax works in log2 units).
#pragma once

#include <immintrin.h>

#include <cstddef>

#include "exp2_series.h"

namespace erank_cpu {

// 2^t = 2^f · 2^n with n = round(t) and f in [-0.5, 0.5]: 2^f by the polynomial c (highest
// degree first, Horner), 2^n by vscalefps.
template <std::size_t N>
inline __m512 exp2_poly(__m512 t, const float (&c)[N]) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(c[0]);
  for (std::size_t i = 1; i < N; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
  return _mm512_scalef_ps(p, n);
}

// 2^t elementwise to ~1e-7 relative. t is clamped at -126 (the result is then ~1e-38).
inline __m512 exp2_ps(__m512 t) {
  return exp2_poly(_mm512_max_ps(t, _mm512_set1_ps(-126.0f)), EXP2_TAYLOR6);
}

// 2^t for t <= 0 to within 3.1e-6 relative, for weights rounded to bfloat16 afterwards (half an
// ulp there is 2e-3): two multiply-adds fewer than exp2_ps. Below -150 vscalefps gives 0.
inline __m512 exp2_ps_bf16(__m512 t) { return exp2_poly(t, EXP2_FIT4); }

// silu(y) = y / (1 + 2^(-y log2 e)) elementwise, with exp2_ps.
inline __m512 silu_ps(__m512 y) {
  const __m512 e = exp2_ps(_mm512_mul_ps(y, _mm512_set1_ps(-LOG2E)));
  return _mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

}  // namespace erank_cpu
