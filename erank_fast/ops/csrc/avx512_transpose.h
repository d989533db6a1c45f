// A 16 x 16 block of 32-bit elements transposed in registers with AVX-512: four stages of
// permutes, each swapping the off-diagonal quarters of blocks of 2b x 2b (b = 8, 4, 2, 1), 64
// permutes in all. The prefill attention tile packs its Q rows into lanes and writes its
// output rows back with it.
#pragma once

#include <immintrin.h>

namespace erank_cpu {

inline void transpose16(__m512 x[16]) {
  for (int b = 8; b >= 1; b /= 2) {
    alignas(64) int32_t low[16], high[16];
    for (int l = 0; l < 16; ++l) {
      low[l] = (l & b) ? 16 + l - b : l;   // row i: its own lane, or row i + b's lane l - b
      high[l] = (l & b) ? 16 + l : l + b;  // row i + b: row i's lane l + b, or its own lane
    }
    const __m512i lo = _mm512_load_si512(low), hi = _mm512_load_si512(high);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 a = x[i], c = x[i + b];
      x[i] = _mm512_permutex2var_ps(a, lo, c);
      x[i + b] = _mm512_permutex2var_ps(a, hi, c);
    }
  }
}

}  // namespace erank_cpu
