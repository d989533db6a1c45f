// A 16 x 16 block of 32-bit elements transposed in registers with AVX-512: four stages of
// permutes, each swapping the off-diagonal quarters of blocks of 2b x 2b (b = 8, 4, 2, 1), 64
// permutes in all. The prefill attention tile packs its Q rows into lanes and writes its
// output rows back with it.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace erank_cpu {

// The permutes' lane indices per stage s (b = 8 >> s), made once: row i takes its own lane l,
// or row i + b's lane l - b (LOW); row i + b takes row i's lane l + b, or its own (HIGH).
struct TransposeLanes {
  alignas(64) int32_t low[4][16], high[4][16];
  constexpr TransposeLanes() : low(), high() {
    for (int s = 0; s < 4; ++s)
      for (int l = 0, b = 8 >> s; l < 16; ++l) {
        low[s][l] = (l & b) ? 16 + l - b : l;
        high[s][l] = (l & b) ? 16 + l : l + b;
      }
  }
};
inline constexpr TransposeLanes TRANSPOSE_LANES{};

inline void transpose16(__m512 x[16]) {
  for (int s = 0, b = 8; s < 4; ++s, b /= 2) {
    const __m512i lo = _mm512_load_si512(TRANSPOSE_LANES.low[s]);
    const __m512i hi = _mm512_load_si512(TRANSPOSE_LANES.high[s]);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 a = x[i], c = x[i + b];
      x[i] = _mm512_permutex2var_ps(a, lo, c);
      x[i + b] = _mm512_permutex2var_ps(a, hi, c);
    }
  }
}

}  // namespace erank_cpu
