// int8 attention scores for the float32 prefill tile of shared_prefix_attention.cpp (the int8
// layers of quantize="int8", on a CPU with AVX512-VNNI): S = Q K^T as bytes, vpdpbusd doing 64
// multiply-adds where an FMA does 16; the softmax and P V stay float32.
//   K: each (document, KV head)'s keys, less their mean (a row's scores all move by q . mean,
//      which the softmax ignores, and K's large channels, the same in every key, leave the
//      bytes to what tells the keys apart), rounded to int8 with a scale per key and stored
//      as uint8 (value + 128: vpdpbusd multiplies unsigned by signed bytes); made once per
//      thread and call, shared by the document's tiles on that thread.
//   Q: each row rounded to int8 with its own scale, 4 bytes a lane.
//   S = (sum q8 * (k8 + 128) - 128 * sum q8) * q scale * k scale, the correction the
//   accumulators' starting value.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_transpose.h"

namespace erank_cpu {

struct Int8Keys {
  uint64_t call = 0;  // the call, document and KV head these keys are of
  int64_t doc = -1, head = -1;
  std::vector<uint8_t> k;    // [n][D]: round((key - mean) / scale) + 128
  std::vector<float> scale;  // [n]: the key's max |key - mean| / 127 (1 where it is 0)
};

// The n keys key_row(0..n-1) (float rows of D) into c.
template <int D, typename KeyRow>
void quantize_keys(Int8Keys& c, int64_t n, KeyRow&& key_row) {
  constexpr int C = D / 16;
  c.k.resize(n * D);
  c.scale.resize(n);
  __m512 mean[C];
  for (int i = 0; i < C; ++i) mean[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* row = key_row(j);
    for (int i = 0; i < C; ++i) mean[i] = _mm512_add_ps(mean[i], _mm512_loadu_ps(row + 16 * i));
  }
  const __m512 inv_n = _mm512_set1_ps(1.0f / static_cast<float>(n));
  for (int i = 0; i < C; ++i) mean[i] = _mm512_mul_ps(mean[i], inv_n);
  const __m512i zero_point = _mm512_set1_epi32(128);
  for (int64_t j = 0; j < n; ++j) {
    const float* row = key_row(j);
    __m512 x[C], top = _mm512_setzero_ps();
    for (int i = 0; i < C; ++i) {
      x[i] = _mm512_sub_ps(_mm512_loadu_ps(row + 16 * i), mean[i]);
      top = _mm512_max_ps(top, _mm512_abs_ps(x[i]));
    }
    const float m = _mm512_reduce_max_ps(top);
    c.scale[j] = m > 0.0f ? m / 127.0f : 1.0f;
    const __m512 inv = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 1.0f);
    for (int i = 0; i < C; ++i) {
      const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x[i], inv)), zero_point);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c.k.data() + j * D + 16 * i),
                       _mm512_cvtusepi32_epi8(v));
    }
  }
}

// A tile's MR query rows (the first `rows` of q_row; the others zero) into qp[D/4][MR], the
// bytes 4w..4w+3 of row r in word w of lane r; bias[r] = -128 * the sum of row r's bytes,
// qscale[r] = its scale times scale_log2. 16 rows at a time, transposed first (rows in the
// lanes), so that each row's maximum and sum are vertical.
template <int D, int MR>
void pack_queries_int8(const float* const* q_row, int64_t rows, float scale_log2, uint32_t* qp,
                       int32_t* bias, float* qscale) {
  static_assert(MR % 16 == 0 && D % 16 == 0, "16 rows of 16 values at a time");
  const __m512i low_byte = _mm512_set1_epi32(0xFF);
  for (int r0 = 0; r0 < MR; r0 += 16) {
    alignas(64) float xt[D][16];  // xt[d][r]: row r0 + r's value d
    for (int d0 = 0; d0 < D; d0 += 16) {
      __m512 x[16];
      for (int r = 0; r < 16; ++r)
        x[r] = r0 + r < rows ? _mm512_loadu_ps(q_row[r0 + r] + d0) : _mm512_setzero_ps();
      transpose16(x);
      for (int d = 0; d < 16; ++d) _mm512_store_ps(xt[d0 + d], x[d]);
    }
    __m512 top = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_load_ps(xt[d])));
    const __mmask16 nonzero = _mm512_cmp_ps_mask(top, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 scale = _mm512_mask_div_ps(one, nonzero, top, _mm512_set1_ps(127.0f));
    const __m512 inv = _mm512_mask_div_ps(one, nonzero, _mm512_set1_ps(127.0f), top);
    __m512i sum = _mm512_setzero_si512();
    for (int w = 0; w < D / 4; ++w) {
      __m512i word = _mm512_setzero_si512();
      for (int i = 0; i < 4; ++i) {
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(xt[4 * w + i]), inv));
        sum = _mm512_add_epi32(sum, v);
        word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_and_si512(v, low_byte), 8 * i));
      }
      _mm512_store_si512(qp + w * MR + r0, word);
    }
    _mm512_store_si512(bias + r0, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)));
    _mm512_store_ps(qscale + r0, _mm512_mul_ps(scale, _mm512_set1_ps(scale_log2)));
  }
}

// acc += the dot products of a's unsigned and b's signed bytes, 4 to a lane (vpdpbusd). GCC
// copies the accumulator in and out of another register around the intrinsic, and spills the
// tile's 16 accumulators to the stack: written as one instruction on the register itself.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, a, b);
#endif
}

// The int32 scores s[NR][MR] of the tile's rows against NR keys (uint8 rows of D), before
// the scales: each lane starts at its row's bias.
template <int D, int MR, int NR>
inline void scores_int8(const uint32_t* qp, const uint8_t* const* keys, __m512i bias0,
                        __m512i bias1, int32_t* s) {
  __m512i acc[NR][2];
  for (int j = 0; j < NR; ++j) {
    acc[j][0] = bias0;
    acc[j][1] = bias1;
  }
  for (int w = 0; w < D / 4; ++w) {
    const __m512i q0 = _mm512_load_si512(qp + w * MR), q1 = _mm512_load_si512(qp + w * MR + 16);
    for (int j = 0; j < NR; ++j) {
      int32_t word;
      std::memcpy(&word, keys[j] + 4 * w, sizeof(word));
      const __m512i k = _mm512_set1_epi32(word);
      acc[j][0] = dpbusd(acc[j][0], k, q0);
      acc[j][1] = dpbusd(acc[j][1], k, q1);
    }
  }
  for (int j = 0; j < NR; ++j) {
    _mm512_store_si512(s + j * MR, acc[j][0]);
    _mm512_store_si512(s + j * MR + 16, acc[j][1]);
  }
}

}  // namespace erank_cpu
