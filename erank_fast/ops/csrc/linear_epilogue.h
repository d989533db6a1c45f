// The bfloat16 linear layers' epilogue on 16 output columns, shared by the small-batch blocks'
// two kernels (small_linear.cpp, tile_linear.cpp): float32 products plus bias, then SiLU, a
// product with or a sum into the output's current values, rounded once to bfloat16.
#pragma once

#if defined(__AVX512BF16__)
#include <immintrin.h>

#include "avx512_bf16.h"
#include "avx512_exp2.h"
#include "erank_cpu.h"

namespace erank_cpu {

// y: 16 float32 products; bias: their 16 biases or null; o: where the lanes of `mask` go (MUL
// and ADD read them first).
inline void finish16(__m512 y, const float* bias, Epilogue epilogue, c10::BFloat16* o,
                     __mmask16 mask) {
  if (bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, bias));
  if (epilogue == SILU) {
    y = silu_ps(y);
  } else if (epilogue == MUL) {
    y = _mm512_mul_ps(y, load16(o, mask));
  } else if (epilogue == ADD) {
    y = _mm512_add_ps(y, load16(o, mask));
  }
  store16(o, y, mask);
}

}  // namespace erank_cpu
#endif
