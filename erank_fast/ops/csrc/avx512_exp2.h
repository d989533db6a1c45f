// 2^t on 16 floats with AVX-512 (the CPU attention kernels' softmax works in log2 units).
#pragma once

#include <immintrin.h>

namespace erank_cpu {

constexpr float LOG2E = 1.4426950408889634f;

// 2^t elementwise: t = n + f with f in [-0.5, 0.5], 2^f by its degree-6 Taylor series
// (relative error ~1e-7), 2^n by vscalefps. t is clamped at -126 (the result is then ~1e-38).
inline __m512 exp2_ps(__m512 t) {
  t = _mm512_max_ps(t, _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428441e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 2^t for t <= 0 within 3.1e-6 relative (a degree-4 least-squares fit of 2^f on [-0.5, 0.5]),
// for weights rounded to bfloat16 afterwards (half an ulp there is 2e-3): two multiply-adds
// fewer than exp2_ps. Below -150 vscalefps gives 0.
inline __m512 exp2_ps_bf16(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(9.600395517050124e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5916893825048185e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4023718463104982e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931219948398218e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace erank_cpu
