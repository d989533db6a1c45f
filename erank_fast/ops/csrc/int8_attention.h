// int8 prefill attention for the float32 tile of shared_prefix_attention.cpp (the int8 layers
// of quantize="int8", on a CPU with AVX512-VNNI): both products as bytes, vpdpbusd doing 64
// multiply-adds where an FMA does 16; the online softmax stays float32.
//   K, V: each (document, KV head)'s keys and values less their mean over its keys (a row's
//      scores all move by q . mean, which the softmax ignores; the values' mean is added back
//      to the output), each key and value rounded to int8 with its own scale; keys stored as
//      uint8 (value + 128: vpdpbusd multiplies unsigned by signed bytes), values in quads of
//      keys. Made once per thread and call, shared by the document's tiles on that thread.
//   Q: each row rounded to int8 with its own scale, 4 bytes a lane.
//   S = (sum q8 * (k8 + 128) - 128 * sum q8) * q scale * k scale, the correction the
//      accumulators' starting value.
//   P V: per block of 32 keys, P times each key's value scale, rounded per row to uint8 (the
//      row's largest at 255), against the int8 values; the int32 sums times the row's step.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_bf16.h"
#include "avx512_transpose.h"

namespace erank_cpu {

struct Int8KV {
  uint64_t call = 0;  // the call, document and KV head these keys are of
  int64_t doc = -1, head = -1;
  std::vector<uint8_t> k;    // [n][D]: round((key - mean) / scale) + 128
  std::vector<float> scale;  // [n]: the key's max |key - mean| / 127 (1 where it is 0)
  // the values, likewise less their mean, int8 with a scale per key, in quads of keys:
  // v[t][d] holds the bytes of keys 4t..4t+3 at dimension d (zero past n)
  std::vector<uint32_t> v;     // [ceil(n / 4)][D]
  std::vector<float> v_scale;  // [n]
  std::vector<float> v_mean;   // [D]
};

// The mean of the n rows row(0..n-1) of D values, 16 at a time.
template <int D, typename Row>
void mean_of(int64_t n, Row&& row, __m512* mean) {
  for (int i = 0; i < D / 16; ++i) mean[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const auto* x = row(j);
    for (int i = 0; i < D / 16; ++i) mean[i] = _mm512_add_ps(mean[i], load16(x + 16 * i));
  }
  const __m512 inv_n = _mm512_set1_ps(1.0f / static_cast<float>(n));
  for (int i = 0; i < D / 16; ++i) mean[i] = _mm512_mul_ps(mean[i], inv_n);
}

// x - mean rounded to int8 with its own scale (its max |x - mean| / 127, 1 where that is 0):
// the values into v (16 a vector, as int32), the scale returned.
template <int D, typename T>
float centred_int8(const T* x, const __m512* mean, __m512i* v) {
  __m512 y[D / 16], top = _mm512_setzero_ps();
  for (int i = 0; i < D / 16; ++i) {
    y[i] = _mm512_sub_ps(load16(x + 16 * i), mean[i]);
    top = _mm512_max_ps(top, _mm512_abs_ps(y[i]));
  }
  const float m = _mm512_reduce_max_ps(top);
  const __m512 inv = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 1.0f);
  for (int i = 0; i < D / 16; ++i) v[i] = _mm512_cvtps_epi32(_mm512_mul_ps(y[i], inv));
  return m > 0.0f ? m / 127.0f : 1.0f;
}

// The n values value_row(0..n-1) into c.v, c.v_scale and c.v_mean.
template <int D, typename ValueRow>
void quantize_values(Int8KV& c, int64_t n, ValueRow&& value_row) {
  c.v.assign((n + 3) / 4 * D, 0u);
  c.v_scale.resize(n);
  c.v_mean.resize(D);
  __m512 mean[D / 16];
  mean_of<D>(n, value_row, mean);
  for (int i = 0; i < D / 16; ++i) _mm512_storeu_ps(c.v_mean.data() + 16 * i, mean[i]);
  const __m512i low_byte = _mm512_set1_epi32(0xFF);
  for (int64_t j = 0; j < n; ++j) {
    __m512i v[D / 16];
    c.v_scale[j] = centred_int8<D>(value_row(j), mean, v);
    uint32_t* quad = c.v.data() + (j / 4) * D;  // key j's byte of each word
    const int shift = 8 * static_cast<int>(j % 4);
    for (int i = 0; i < D / 16; ++i) {
      const __m512i word = _mm512_loadu_si512(quad + 16 * i);
      _mm512_storeu_si512(quad + 16 * i, _mm512_or_si512(
          word, _mm512_slli_epi32(_mm512_and_si512(v[i], low_byte), shift)));
    }
  }
}

// The n keys key_row(0..n-1) (rows of D float32 or bfloat16 values) into c.
template <int D, typename KeyRow>
void quantize_keys(Int8KV& c, int64_t n, KeyRow&& key_row) {
  c.k.resize(n * D);
  c.scale.resize(n);
  __m512 mean[D / 16];
  mean_of<D>(n, key_row, mean);
  const __m512i zero_point = _mm512_set1_epi32(128);
  for (int64_t j = 0; j < n; ++j) {
    __m512i v[D / 16];
    c.scale[j] = centred_int8<D>(key_row(j), mean, v);
    for (int i = 0; i < D / 16; ++i)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c.k.data() + j * D + 16 * i),
                       _mm512_cvtusepi32_epi8(_mm512_add_epi32(v[i], zero_point)));
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

// o [D][MR] = o * alpha + P V for one block of nk keys (key j0 of the block is quad j0 / 4 of
// vq, its scales vs): P [nk][MR] (float, zero where masked) times each key's value scale,
// rounded per row to uint8 (the row's maximum of the block at 255), 4 keys a lane, against the
// int8 value quads broadcast (vpdpbusd); the int32 sums times the row's step into o.
template <int D, int MR, int KB>
inline void accumulate_int8(float* o, const float* s, int nk, const uint32_t* vq,
                            const float* vs, __m512 alpha0, __m512 alpha1) {
  static_assert(MR == 32 && KB % 4 == 0, "two vectors of rows, quads of keys");
  alignas(64) uint32_t pp[KB / 4][MR];
  __m512 top0 = _mm512_setzero_ps(), top1 = top0;
  for (int j = 0; j < nk; ++j) {
    const __m512 scale = _mm512_set1_ps(vs[j]);
    top0 = _mm512_max_ps(top0, _mm512_mul_ps(_mm512_load_ps(s + j * MR), scale));
    top1 = _mm512_max_ps(top1, _mm512_mul_ps(_mm512_load_ps(s + j * MR + 16), scale));
  }
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), full = _mm512_set1_ps(255.0f);
  const __mmask16 nz0 = _mm512_cmp_ps_mask(top0, zero, _CMP_GT_OQ);
  const __mmask16 nz1 = _mm512_cmp_ps_mask(top1, zero, _CMP_GT_OQ);
  const __m512 inv0 = _mm512_mask_div_ps(one, nz0, full, top0);
  const __m512 inv1 = _mm512_mask_div_ps(one, nz1, full, top1);
  const __m512 step0 = _mm512_mask_div_ps(zero, nz0, top0, full);
  const __m512 step1 = _mm512_mask_div_ps(zero, nz1, top1, full);
  const int quads = (nk + 3) / 4;
  for (int t = 0; t < quads; ++t) {
    __m512i w0 = _mm512_setzero_si512(), w1 = w0;
    for (int i = 0; i < 4 && 4 * t + i < nk; ++i) {
      const int j = 4 * t + i;
      const __m512 scale = _mm512_set1_ps(vs[j]);
      const __m512i b0 = _mm512_cvtps_epi32(
          _mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(s + j * MR), scale), inv0));
      const __m512i b1 = _mm512_cvtps_epi32(
          _mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(s + j * MR + 16), scale), inv1));
      w0 = _mm512_or_si512(w0, _mm512_slli_epi32(b0, 8 * i));
      w1 = _mm512_or_si512(w1, _mm512_slli_epi32(b1, 8 * i));
    }
    _mm512_store_si512(pp[t], w0);
    _mm512_store_si512(pp[t] + 16, w1);
  }
  for (int d0 = 0; d0 < D; d0 += 8) {
    __m512i acc[8][2];
    for (int dd = 0; dd < 8; ++dd) acc[dd][0] = acc[dd][1] = _mm512_setzero_si512();
    for (int t = 0; t < quads; ++t) {
      const __m512i p0 = _mm512_load_si512(pp[t]), p1 = _mm512_load_si512(pp[t] + 16);
      for (int dd = 0; dd < 8; ++dd) {
        const __m512i x = _mm512_set1_epi32(static_cast<int>(vq[t * D + d0 + dd]));
        acc[dd][0] = dpbusd(acc[dd][0], p0, x);
        acc[dd][1] = dpbusd(acc[dd][1], p1, x);
      }
    }
    for (int dd = 0; dd < 8; ++dd) {
      float* row = o + (d0 + dd) * MR;
      _mm512_store_ps(row, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[dd][0]), step0,
                                           _mm512_mul_ps(_mm512_load_ps(row), alpha0)));
      _mm512_store_ps(row + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[dd][1]), step1,
                                                _mm512_mul_ps(_mm512_load_ps(row + 16), alpha1)));
    }
  }
}

}  // namespace erank_cpu
