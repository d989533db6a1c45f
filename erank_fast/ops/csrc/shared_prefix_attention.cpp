// Shared-prefix attention on CPU for a packed varlen batch (prefill, decode, or both): every new
// token of every document attends to its query's prefix rows and causally to its own rows of
// the K/V arena, both read in place (no gather, no padding, no mask tensor). This file holds
// the AVX-512 kernels (float32, and bfloat16 with AVX512-BF16); a CPU without AVX-512 builds the
// float32 tile of shared_prefix_attention_portable.h instead.
//
// One task is (document, KV head, tile of MR rows), a row being (new token i, query head g of
// this KV head's group), token-major. The rows sit in the lanes of two 16-float vectors, so the
// online softmax over keys is vertical: per key, a vector of 16 scores, one per row.
//   S = Q K^T: the tile's Q packed once (bfloat16 pairs per lane for AVX512-BF16's vdpbf16ps,
//              or floats), each key's elements broadcast from the arena row; float32 sums.
//   P = exp2((S * scale * log2 e) - running max), masked lanes exactly 0; O = O * alpha + P V
//   in float32 (bfloat16: P rounded to bfloat16, P V by vdpbf16ps over pairs of keys).
//   out = O / l, rounded once to the output dtype.
// FLOPs: 4 * rows * keys * head_dim per task; bytes: the K/V rows once per tile.
// int8_attention (float32 queries, AVX512-VNNI): the tile's two products in int8 instead
// (int8_attention.h), over a float32 or a bfloat16 arena; decode rows stay float32 (reading a
// bfloat16 arena exactly). Without AVX-512 (the portable build) a bfloat16 arena under float32
// queries is read by every step, its arithmetic float32 (shared_prefix_attention_bf16_arena).
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

struct Rows {  // the metadata of one call, per document
  const int64_t *q_cu, *own_base, *own_start, *prefix_start, *prefix_len;
  int64_t group, kv_heads;
  // The arena row of document b's key j: its query's prefix rows first, then its own rows.
  int64_t arena_row(int64_t b, int64_t j) const {
    return j < prefix_len[b] ? prefix_start[b] + j : own_base[b] + j - prefix_len[b];
  }
};

// One unit of work: (document, KV head, first row of its tile); head -1 is every head of a
// one-token document (the builds whose run_single takes them, decode_task_per_document).
// group_cost: the cost of all tiles of its (document, KV head).
struct Task {
  int64_t doc, head, row0, cost, group_cost = 0;
};

}  // namespace

#if defined(__AVX512F__)
#include <immintrin.h>

#include "avx512_bf16.h"
#include "avx512_exp2.h"
#include "avx512_transpose.h"
#include "next_block_prefetch.h"
#if defined(__AVX512VNNI__)
#include "int8_attention.h"
#endif

namespace {

using erank_cpu::exp2_ps;
using erank_cpu::LOG2E;

constexpr int MR = 32;  // rows per tile: two vectors of 16 lanes
constexpr int KB = 32;  // keys per softmax block
constexpr int NR = 8;   // keys per S micro-kernel call

// The element type's view of Q·K: bfloat16 multiplies pairs (vdpbf16ps), float32 one by one.
template <typename T> struct QK;

template <> struct QK<float> {
  using packed_t = float;  // qp[d][MR]
  static constexpr int per_word = 1;
  static inline packed_t word(const float* row, int w) { return row[w]; }
  template <int D>
  static inline void scores(const packed_t* qp, const float* const* keys, float* s) {
    __m512 acc[NR][2];
    for (int j = 0; j < NR; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const __m512 q0 = _mm512_load_ps(qp + d * MR), q1 = _mm512_load_ps(qp + d * MR + 16);
      for (int j = 0; j < NR; ++j) {
        const __m512 k = _mm512_set1_ps(keys[j][d]);
        acc[j][0] = _mm512_fmadd_ps(q0, k, acc[j][0]);
        acc[j][1] = _mm512_fmadd_ps(q1, k, acc[j][1]);
      }
    }
    for (int j = 0; j < NR; ++j) {
      _mm512_store_ps(s + j * MR, acc[j][0]);
      _mm512_store_ps(s + j * MR + 16, acc[j][1]);
    }
  }
  // o [D][MR] = o * alpha + P V for one block: s [KB][MR] holds P (zero past nk)
  template <int D>
  static inline void accumulate(float* o, const float* s, int nk, const float* const* v_rows,
                                __m512 alpha0, __m512 alpha1) {
    for (int d0 = 0; d0 < D; d0 += 8) {
      __m512 acc[8][2];
      for (int dd = 0; dd < 8; ++dd) {
        acc[dd][0] = _mm512_mul_ps(_mm512_load_ps(o + (d0 + dd) * MR), alpha0);
        acc[dd][1] = _mm512_mul_ps(_mm512_load_ps(o + (d0 + dd) * MR + 16), alpha1);
      }
      for (int j = 0; j < nk; ++j) {
        const __m512 p0 = _mm512_load_ps(s + j * MR), p1 = _mm512_load_ps(s + j * MR + 16);
        for (int dd = 0; dd < 8; ++dd) {
          const __m512 x = _mm512_set1_ps(v_rows[j][d0 + dd]);
          acc[dd][0] = _mm512_fmadd_ps(p0, x, acc[dd][0]);
          acc[dd][1] = _mm512_fmadd_ps(p1, x, acc[dd][1]);
        }
      }
      for (int dd = 0; dd < 8; ++dd) {
        _mm512_store_ps(o + (d0 + dd) * MR, acc[dd][0]);
        _mm512_store_ps(o + (d0 + dd) * MR + 16, acc[dd][1]);
      }
    }
  }
  // run_single's block: o[g] = o[g] * alpha[g] + sum_j p[g][j] v_j over its nk keys;
  // after_head() after each head's.
  // V rows of float32, or of bfloat16 (a bfloat16 arena under int8 attention)
  template <int D, typename KV, typename After>
  static inline void single_pv(float (*o)[D], const float (*p)[32], const float* alpha,
                               int64_t groups, int nk, const KV* const* v_rows,
                               After&& after_head) {
    for (int64_t g = 0; g < groups; ++g) {
      __m512 acc[D / 16];
      const __m512 a = _mm512_set1_ps(alpha[g]);
      for (int c = 0; c < D / 16; ++c) acc[c] = _mm512_mul_ps(_mm512_load_ps(o[g] + 16 * c), a);
      for (int j = 0; j < nk; ++j) {
        const __m512 pj = _mm512_set1_ps(p[g][j]);
        for (int c = 0; c < D / 16; ++c)
          acc[c] = _mm512_fmadd_ps(pj, erank_cpu::load16(v_rows[j] + 16 * c), acc[c]);
      }
      for (int c = 0; c < D / 16; ++c) _mm512_store_ps(o[g] + 16 * c, acc[c]);
      after_head();
    }
  }
  static inline void store_row(float* dst, __m512 x) { _mm512_storeu_ps(dst, x); }
  // one query row against one key row (float32 or bfloat16): 16 partial sums of q . k
  template <int D, typename KV>
  static inline __m512 dot_partials(const float* q, const KV* k) {
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), erank_cpu::load16(k));
    for (int d = 16; d < D; d += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), erank_cpu::load16(k + d), acc);
    return acc;
  }
};

#if defined(__AVX512BF16__)
template <> struct QK<c10::BFloat16> {
  using packed_t = uint32_t;  // qp[d/2][MR]: the pair (q[2w], q[2w+1]) of each row
  static constexpr int per_word = 2;
  static inline packed_t word(const c10::BFloat16* row, int w) {
    uint32_t x;
    std::memcpy(&x, row + 2 * w, sizeof(x));
    return x;
  }
  template <int D>
  static inline void scores(const packed_t* qp, const c10::BFloat16* const* keys, float* s) {
    __m512 acc[NR][2];
    for (int j = 0; j < NR; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int w = 0; w < D / 2; ++w) {
      const __m512bh q0 = (__m512bh)_mm512_load_si512(qp + w * MR);
      const __m512bh q1 = (__m512bh)_mm512_load_si512(qp + w * MR + 16);
      for (int j = 0; j < NR; ++j) {
        const __m512bh k = (__m512bh)_mm512_set1_epi32(static_cast<int>(word(keys[j], w)));
        acc[j][0] = _mm512_dpbf16_ps(acc[j][0], q0, k);
        acc[j][1] = _mm512_dpbf16_ps(acc[j][1], q1, k);
      }
    }
    for (int j = 0; j < NR; ++j) {
      _mm512_store_ps(s + j * MR, acc[j][0]);
      _mm512_store_ps(s + j * MR + 16, acc[j][1]);
    }
  }
  // Two V rows as pairs per head dimension: out[d] = (a[d], b[d]), a's in the low half.
  template <int D>
  static inline void value_pairs(const c10::BFloat16* a, const c10::BFloat16* b, uint32_t* out) {
    const __m512i lo = _mm512_set_epi16(
        47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int d = 0; d < D; d += 32) {
      const __m512i x = _mm512_loadu_si512(a + d), y = _mm512_loadu_si512(b + d);
      _mm512_store_si512(out + d, _mm512_permutex2var_epi16(x, lo, y));
      _mm512_store_si512(out + d + 16, _mm512_permutex2var_epi16(x, hi, y));
    }
  }
  // o [D][MR] = o * alpha + P V for one block with vdpbf16ps over key pairs: P rounded to
  // bfloat16 (as transformers' bfloat16 attention does), pairs (p[2t][r], p[2t+1][r]) in each
  // lane r, against (v[2t][d], v[2t+1][d]) broadcast; s [KB][MR] holds P, zero past nk.
  template <int D>
  static inline void accumulate(float* o, const float* s, int nk,
                                const c10::BFloat16* const* v_rows, __m512 alpha0,
                                __m512 alpha1) {
    const int pairs = (nk + 1) / 2;
    alignas(64) uint32_t pp[KB / 2][MR];  // P pairs per lane
    alignas(64) uint32_t vp[KB / 2][D];   // V pairs per head dimension
    const __m512i interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
        23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int t = 0; t < pairs; ++t) {
      for (int half = 0; half < 2; ++half) {
        const __m512 even = _mm512_load_ps(s + 2 * t * MR + 16 * half);
        const __m512 odd = _mm512_load_ps(s + (2 * t + 1) * MR + 16 * half);
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(odd, even);  // even low, odd high
        _mm512_store_si512(pp[t] + 16 * half, _mm512_permutexvar_epi16(interleave, both));
      }
      value_pairs<D>(v_rows[2 * t], v_rows[2 * t + 1], vp[t]);
    }
    for (int d0 = 0; d0 < D; d0 += 8) {
      __m512 acc[8][2];
      for (int dd = 0; dd < 8; ++dd) {
        acc[dd][0] = _mm512_mul_ps(_mm512_load_ps(o + (d0 + dd) * MR), alpha0);
        acc[dd][1] = _mm512_mul_ps(_mm512_load_ps(o + (d0 + dd) * MR + 16), alpha1);
      }
      for (int t = 0; t < pairs; ++t) {
        const __m512bh p0 = (__m512bh)_mm512_load_si512(pp[t]);
        const __m512bh p1 = (__m512bh)_mm512_load_si512(pp[t] + 16);
        for (int dd = 0; dd < 8; ++dd) {
          const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(vp[t][d0 + dd]));
          acc[dd][0] = _mm512_dpbf16_ps(acc[dd][0], p0, x);
          acc[dd][1] = _mm512_dpbf16_ps(acc[dd][1], p1, x);
        }
      }
      for (int dd = 0; dd < 8; ++dd) {
        _mm512_store_ps(o + (d0 + dd) * MR, acc[dd][0]);
        _mm512_store_ps(o + (d0 + dd) * MR + 16, acc[dd][1]);
      }
    }
  }
  // run_single's block with vdpbf16ps over key pairs, as accumulate's: each pair's V rows
  // interleaved once, (v[2t][d], v[2t+1][d]) in lane d, for all G heads, each head's P pair
  // (p[g][2t], p[g][2t+1]) rounded to bfloat16 and broadcast. Keys past nk weigh 0 (their rows
  // repeat the last key's, so they are finite). after_head() after each head's.
  template <int D, typename After>
  static inline void single_pv(float (*o)[D], const float (*p)[32], const float* alpha,
                               int64_t groups, int nk, const c10::BFloat16* const* v_rows,
                               After&& after_head) {
    constexpr int MAX_G = 16;
    const int pairs = (nk + 1) / 2;
    alignas(64) uint32_t vp[16][D];
    alignas(64) uint32_t pp[MAX_G][16];
    for (int t = 0; t < pairs; ++t) value_pairs<D>(v_rows[2 * t], v_rows[2 * t + 1], vp[t]);
    for (int64_t g = 0; g < groups; ++g)  // 32 floats -> 16 pairs, key 2t in the low half
      _mm512_store_si512(pp[g], (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(p[g] + 16),
                                                              _mm512_load_ps(p[g])));
    for (int64_t g = 0; g < groups; ++g) {
      __m512 acc[D / 16];
      const __m512 a = _mm512_set1_ps(alpha[g]);
      for (int c = 0; c < D / 16; ++c) acc[c] = _mm512_mul_ps(_mm512_load_ps(o[g] + 16 * c), a);
      for (int t = 0; t < pairs; ++t) {
        const __m512bh pt = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[g][t]));
        for (int c = 0; c < D / 16; ++c)
          acc[c] = _mm512_dpbf16_ps(acc[c], pt, (__m512bh)_mm512_load_si512(vp[t] + 16 * c));
      }
      for (int c = 0; c < D / 16; ++c) _mm512_store_ps(o[g] + 16 * c, acc[c]);
      after_head();
    }
  }
  static inline void store_row(c10::BFloat16* dst, __m512 x) { erank_cpu::store16(dst, x); }
  template <int D>
  static inline __m512 dot_partials(const c10::BFloat16* q, const c10::BFloat16* k) {
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 32)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + d),
                             (__m512bh)_mm512_loadu_si512(k + d));
    return acc;
  }
};
#endif

// run_single here takes every head of a one-token document in one task (up to 16 query heads)
// where the step has enough such documents to go round the threads; else one KV head per task.
// Per document, each key's rows for all heads are read as one contiguous run: on a 2-core Xeon
// with AMX, SmolLM2's decode attention at 16-100 documents 1.07-1.10x one KV head per task.
inline bool decode_task_per_document(int64_t q_heads, int64_t documents) {
  return q_heads <= 16 && documents >= 2 * at::get_num_threads();
}

#if defined(__AVX512VNNI__)
// This thread's int8 keys and values of task t's (document, KV head) in call `call`
// (int8_attention.h), made by the first of their tiles the thread runs.
template <int D, typename KV>
const erank_cpu::Int8KV& int8_kv(uint64_t call, const Task& t, const KV* k, const KV* v,
                                 int64_t kv_s0, int64_t kv_s1, const Rows& m) {
  thread_local erank_cpu::Int8KV kv;
  if (kv.call != call || kv.doc != t.doc || kv.head != t.head) {
    const int64_t b = t.doc, n = m.prefix_len[b] + m.own_start[b] + m.q_cu[b + 1] - m.q_cu[b];
    auto row = [&](const KV* arena) {
      return [&, arena](int64_t j) { return arena + m.arena_row(b, j) * kv_s0 + t.head * kv_s1; };
    };
    erank_cpu::quantize_keys<D>(kv, n, row(k));
    erank_cpu::quantize_values<D>(kv, n, row(v));
    kv.call = call;
    kv.doc = b;
    kv.head = t.head;
  }
  return kv;
}
#endif

// One tile; INT8 (float32, AVX512-VNNI): Q K^T and P V in int8 (int8_attention.h), `call`
// numbering this call's int8 keys and values.
template <typename T, int D, bool INT8 = false, typename KV = T>
void run_tile(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const KV* k, const KV* v,
              int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1,
              const Rows& m, float scale_log2, uint64_t call = 0) {
  static_assert(INT8 || std::is_same_v<T, KV>, "a bfloat16 arena under float32 queries: int8");
  using Q = QK<T>;
  using packed_t = typename Q::packed_t;
  constexpr int W = D / Q::per_word;
  alignas(64) packed_t qp[W * MR];
  alignas(64) float s[KB * MR];
  alignas(64) float o[D * MR];
  alignas(64) int32_t limit[MR];
  const KV* key_rows[KB];
  const KV* value_rows[KB];
#if defined(__AVX512VNNI__)
  alignas(64) int32_t bias8[MR];
  alignas(64) float qscale8[MR];
  const uint8_t* key8[KB];
  float kscale8[KB];
  const erank_cpu::Int8KV* kv8 = nullptr;
  if constexpr (INT8) kv8 = &int8_kv<D, KV>(call, t, k, v, kv_s0, kv_s1, m);
#else
  static_assert(!INT8, "int8 attention needs AVX512-VNNI");
#endif

  const int64_t b = t.doc, g_size = m.group;
  const int64_t n_new = m.q_cu[b + 1] - m.q_cu[b], rows = n_new * g_size;
  const int64_t tile_rows = std::min<int64_t>(MR, rows - t.row0);
  const int64_t i0 = t.row0 / g_size, i1 = (t.row0 + tile_rows - 1) / g_size;
  const int64_t start = m.own_start[b], plen = m.prefix_len[b];
  // Q tile, packed (16 rows x 16 words at a time, transposed in registers); rows past the tile
  // are zero (their outputs are never written).
  static_assert(sizeof(packed_t) == 4 && W % 16 == 0, "32-bit words, 16 at a time");
  alignas(64) static const packed_t zeros[W] = {};
  const T* q_row[MR];
  for (int r = 0; r < MR; ++r) {
    const int64_t i = (t.row0 + r) / g_size, g = (t.row0 + r) % g_size;
    q_row[r] = r < tile_rows ? q + (m.q_cu[b] + i) * q_s0 + (t.head * g_size + g) * q_s1
                             : reinterpret_cast<const T*>(zeros);
    if (r < tile_rows) limit[r] = static_cast<int32_t>(start + i);  // own keys 0..start+i
  }
#if defined(__AVX512VNNI__)
  if constexpr (INT8)
    erank_cpu::pack_queries_int8<D, MR>(reinterpret_cast<const float* const*>(q_row), tile_rows,
                                        scale_log2, reinterpret_cast<uint32_t*>(qp), bias8,
                                        qscale8);
  else
#endif
  for (int r0 = 0; r0 < MR; r0 += 16)
    for (int w0 = 0; w0 < W; w0 += 16) {
      __m512 x[16];
      for (int r = 0; r < 16; ++r)
        x[r] = _mm512_loadu_ps(reinterpret_cast<const float*>(q_row[r0 + r]) + w0);
      erank_cpu::transpose16(x);
      for (int w = 0; w < 16; ++w) _mm512_store_ps(reinterpret_cast<float*>(qp + (w0 + w) * MR + r0), x[w]);
    }
  for (int r = tile_rows; r < MR; ++r) limit[r] = std::numeric_limits<int32_t>::max();
  const __m512i limit0 = _mm512_load_si512(limit), limit1 = _mm512_load_si512(limit + 16);

  std::memset(o, 0, sizeof(o));
  __m512 m0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  __m512 l0 = _mm512_setzero_ps(), l1 = l0;
  const __m512 scale = _mm512_set1_ps(scale_log2);
  const int64_t n_keys = plen + start + i1 + 1;
  const int64_t unmasked = plen + start + i0 + 1;  // keys below this are visible to every row
  for (int64_t j0 = 0; j0 < n_keys; j0 += KB) {
    const int nk = static_cast<int>(std::min<int64_t>(KB, n_keys - j0));
    for (int j = 0; j < KB; ++j) {
      const int64_t key = j0 + std::min(j, nk - 1);  // past the end: repeat the last key
#if defined(__AVX512VNNI__)
      if constexpr (INT8) {
        key8[j] = kv8->k.data() + key * D;
        kscale8[j] = kv8->scale[key];
        continue;
      }
#endif
      const int64_t arena_row = m.arena_row(b, key);
      key_rows[j] = k + arena_row * kv_s0 + t.head * kv_s1;
      value_rows[j] = v + arena_row * kv_s0 + t.head * kv_s1;
    }
    for (int j = 0; j < KB; j += NR) {
      if (j >= nk) break;
#if defined(__AVX512VNNI__)
      if constexpr (INT8) {
        erank_cpu::scores_int8<D, MR, NR>(
            reinterpret_cast<const uint32_t*>(qp), key8 + j, _mm512_load_si512(bias8),
            _mm512_load_si512(bias8 + 16), reinterpret_cast<int32_t*>(s + j * MR));
        continue;
      }
#endif
      if constexpr (!INT8) Q::template scores<D>(qp, key_rows + j, s + j * MR);
    }
    // scale into log2 units, mask the causal band, block maximum
    __m512 bm0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), bm1 = bm0;
    __mmask16 keep0[KB], keep1[KB];
    for (int j = 0; j < nk; ++j) {
      __m512 s0, s1;
#if defined(__AVX512VNNI__)
      if constexpr (INT8) {  // int32 sums times each row's and this key's scales
        const __m512 ks = _mm512_set1_ps(kscale8[j]);
        s0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(s + j * MR)),
                           _mm512_mul_ps(_mm512_load_ps(qscale8), ks));
        s1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(s + j * MR + 16)),
                           _mm512_mul_ps(_mm512_load_ps(qscale8 + 16), ks));
      } else
#endif
      {
        s0 = _mm512_mul_ps(_mm512_load_ps(s + j * MR), scale);
        s1 = _mm512_mul_ps(_mm512_load_ps(s + j * MR + 16), scale);
      }
      keep0[j] = keep1[j] = 0xFFFF;
      if (j0 + j >= unmasked) {
        const __m512i own = _mm512_set1_epi32(static_cast<int32_t>(j0 + j - plen));
        keep0[j] = _mm512_cmp_epi32_mask(own, limit0, _MM_CMPINT_LE);
        keep1[j] = _mm512_cmp_epi32_mask(own, limit1, _MM_CMPINT_LE);
      }
      bm0 = _mm512_mask_max_ps(bm0, keep0[j], bm0, s0);
      bm1 = _mm512_mask_max_ps(bm1, keep1[j], bm1, s1);
      _mm512_store_ps(s + j * MR, s0);
      _mm512_store_ps(s + j * MR + 16, s1);
    }
    const __m512 new0 = _mm512_max_ps(m0, bm0), new1 = _mm512_max_ps(m1, bm1);
    const __m512 alpha0 = exp2_ps(_mm512_sub_ps(m0, new0));
    const __m512 alpha1 = exp2_ps(_mm512_sub_ps(m1, new1));
    m0 = new0;
    m1 = new1;
    l0 = _mm512_mul_ps(l0, alpha0);
    l1 = _mm512_mul_ps(l1, alpha1);
    for (int j = 0; j < nk; ++j) {
      const __m512 p0 = _mm512_maskz_mov_ps(keep0[j], exp2_ps(_mm512_sub_ps(_mm512_load_ps(s + j * MR), m0)));
      const __m512 p1 = _mm512_maskz_mov_ps(keep1[j], exp2_ps(_mm512_sub_ps(_mm512_load_ps(s + j * MR + 16), m1)));
      l0 = _mm512_add_ps(l0, p0);
      l1 = _mm512_add_ps(l1, p1);
      _mm512_store_ps(s + j * MR, p0);
      _mm512_store_ps(s + j * MR + 16, p1);
    }
    if (nk % 2) {  // the pair partner of the last key (a repeat of it) weighs nothing
      _mm512_store_ps(s + nk * MR, _mm512_setzero_ps());
      _mm512_store_ps(s + nk * MR + 16, _mm512_setzero_ps());
    }
#if defined(__AVX512VNNI__)
    if constexpr (INT8) {
      erank_cpu::accumulate_int8<D, MR, KB>(o, s, nk, kv8->v.data() + (j0 / 4) * D,
                                            kv8->v_scale.data() + j0, alpha0, alpha1);
      continue;
    }
#endif
    if constexpr (!INT8) Q::template accumulate<D>(o, s, nk, value_rows, alpha0, alpha1);
  }
  alignas(64) float inv_l[MR];
  _mm512_store_ps(inv_l, _mm512_div_ps(_mm512_set1_ps(1.0f), l0));
  _mm512_store_ps(inv_l + 16, _mm512_div_ps(_mm512_set1_ps(1.0f), l1));
  // O / l, 16 rows x 16 dimensions at a time transposed back into rows, rounded once
  for (int r0 = 0; r0 < tile_rows; r0 += 16)
    for (int d0 = 0; d0 < D; d0 += 16) {
      __m512 x[16];
      for (int d = 0; d < 16; ++d) x[d] = _mm512_load_ps(o + (d0 + d) * MR + r0);
      erank_cpu::transpose16(x);
      for (int r = 0; r < 16 && r0 + r < tile_rows; ++r) {
        const int64_t i = (t.row0 + r0 + r) / g_size, g = (t.row0 + r0 + r) % g_size;
        T* dst = out + (m.q_cu[b] + i) * o_s0 + (t.head * g_size + g) * o_s1 + d0;
        __m512 y = _mm512_mul_ps(x[r], _mm512_set1_ps(inv_l[r0 + r]));
#if defined(__AVX512VNNI__)
        if constexpr (INT8)  // the values' mean, taken out before rounding them
          y = _mm512_add_ps(y, _mm512_loadu_ps(kv8->v_mean.data() + d0));
#endif
        Q::store_row(dst, y);
      }
    }
}



// The sums of 16 vectors, one per lane (lane j = the sum of x[j]): three unpack-and-add levels
// and one across 128-bit lanes, 45 instructions instead of 16 horizontal reductions.
inline __m512 sum16(__m512 x[16]) {
  __m512 u[8], v[4], w[2];
  for (int i = 0; i < 8; ++i)
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                         _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
    v[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                       _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// A document with one new token (a decode step): its G query heads of KV head t.head, keys in
// the lanes (32 per block: two vectors), since there are too few rows to fill them. P V:
// QK<T>::single_pv (bfloat16: each block's V rows interleaved in pairs once for all G heads).
// KV: the arena's type (a bfloat16 arena under float32 queries with int8 attention).
template <typename T, int D, typename KV = T>
void run_single(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const KV* k, const KV* v,
                int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1,
                const Rows& m, float scale_log2) {
  using Q = QK<T>;
  constexpr int VB = 32;     // keys per block: two vectors of 16 lanes
  constexpr int MAX_Q = 16;  // query heads per task
  const int64_t b = t.doc, groups = m.group, plen = m.prefix_len[b];
  const int64_t n_keys = plen + m.own_start[b] + 1;
  // One KV head, or (head -1) all of them, a block of keys at a time.
  const int64_t h0 = t.head < 0 ? 0 : t.head, h1 = t.head < 0 ? m.kv_heads : t.head + 1;
  const int64_t heads = (h1 - h0) * groups;  // query heads of this task
  TORCH_CHECK(heads <= MAX_Q, "at most ", MAX_Q, " query heads per task");
  alignas(64) float p[MAX_Q][VB];
  alignas(64) float o[MAX_Q][D];
  float run_max[MAX_Q], run_sum[MAX_Q], alpha[MAX_Q];
  int64_t rows[VB];
  const KV* value_rows[VB];
  const KV* key_rows[VB];
  const T* q_rows = q + m.q_cu[b] * q_s0 + h0 * groups * q_s1;
  for (int64_t i = 0; i < heads; ++i) {
    run_max[i] = -std::numeric_limits<float>::infinity();
    run_sum[i] = 0.0f;
    std::memset(o[i], 0, sizeof(o[i]));
  }
  // The next block's own rows (the document's, from memory) are fetched while this block is
  // computed, spread over its work (next_block_prefetch.h): shares of a block's work are 8
  // keys' scores of one query head (4 a head) and one head's P V (4 more).
  constexpr int64_t E = sizeof(KV);
  NextBlock next(k, v, kv_s0 * E, h0 * kv_s1 * E, ((h1 - h0 - 1) * kv_s1 + D) * E, heads * 8,
                 m, b);
  for (int64_t j0 = 0; j0 < n_keys; j0 += VB) {
    const int nk = static_cast<int>(std::min<int64_t>(VB, n_keys - j0));
    next.start(j0 + VB, std::max<int64_t>(0, std::min<int64_t>(VB, n_keys - j0 - VB)));
    for (int j = 0; j < VB; ++j)  // past the end: repeat the last key
      rows[j] = m.arena_row(b, j0 + std::min(j, nk - 1));
    const __mmask16 valid0 = static_cast<__mmask16>((1u << std::min(nk, 16)) - 1);
    const __mmask16 valid1 = static_cast<__mmask16>((1u << std::max(nk - 16, 0)) - 1);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512 scale = _mm512_set1_ps(scale_log2);
    for (int64_t h = h0; h < h1; ++h) {
      for (int j = 0; j < VB; ++j) {
        key_rows[j] = k + rows[j] * kv_s0 + h * kv_s1;
        value_rows[j] = v + rows[j] * kv_s0 + h * kv_s1;
      }
      const int64_t first = (h - h0) * groups;  // this KV head's query heads in the task's
      for (int64_t g = first; g < first + groups; ++g) {
        __m512 partial[16];
        for (int j = 0; j < 16; ++j) {
          partial[j] = Q::template dot_partials<D>(q_rows + g * q_s1, key_rows[j]);
          if (j % 8 == 7) next.step();
        }
        const __m512 s0 =
            _mm512_mask_mov_ps(minus_inf, valid0, _mm512_mul_ps(sum16(partial), scale));
        for (int j = 0; j < 16; ++j) {
          partial[j] = Q::template dot_partials<D>(q_rows + g * q_s1, key_rows[16 + j]);
          if (j % 8 == 7) next.step();
        }
        const __m512 s1 =
            _mm512_mask_mov_ps(minus_inf, valid1, _mm512_mul_ps(sum16(partial), scale));
        const float new_max = std::max(run_max[g], _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
        const __m512 top = _mm512_set1_ps(new_max);
        const __m512 e0 = _mm512_maskz_mov_ps(valid0, exp2_ps(_mm512_sub_ps(s0, top)));
        const __m512 e1 = _mm512_maskz_mov_ps(valid1, exp2_ps(_mm512_sub_ps(s1, top)));
        alpha[g] = std::exp2(run_max[g] - new_max);
        run_sum[g] = run_sum[g] * alpha[g] + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
        run_max[g] = new_max;
        _mm512_store_ps(p[g], e0);
        _mm512_store_ps(p[g] + 16, e1);
      }
      Q::template single_pv<D>(o + first, p + first, alpha + first, groups, nk, value_rows,
                               [&] { next.step(4); });
    }
  }
  T* out_row = out + m.q_cu[b] * o_s0 + h0 * groups * o_s1;
  for (int64_t i = 0; i < heads; ++i) {
    const float inv = 1.0f / run_sum[i];
    for (int d = 0; d < D; ++d) out_row[i * o_s1 + d] = static_cast<T>(o[i][d] * inv);
  }
}

}  // namespace
#else
#include "shared_prefix_attention_portable_decode.h"
#endif

bool shared_prefix_attention_supports(std::string dtype) {
#if defined(__AVX512BF16__)
  if (dtype == "bfloat16") return true;
#endif
  return dtype == "float32";
}

// Whether float32 queries may read a bfloat16 arena without int8 attention: the portable
// kernels widen it as they read (the AVX-512 ones only under int8 attention).
bool shared_prefix_attention_bf16_arena() {
#if defined(__AVX512F__)
  return false;
#else
  return true;
#endif
}

bool shared_prefix_attention_int8_available() {
#if defined(__AVX512VNNI__)
  return true;
#else
  return false;
#endif
}

// q [N, Hq, D] packed by document (rows q_cu[b]..q_cu[b+1]); k, v [T, Hkv, D], the arena;
// per document (int64 [B]): its own rows start at own_base, own_start of them precede this
// step's tokens, and its query's prefix is rows prefix_start .. + prefix_len. -> out [N, Hq, D].
// Rows of q past q_cu[B] (padding: the linear layers run on whole blocks of rows) get zeros.
// int8_attention: the prefill tiles' Q K^T and P V in int8 (float32, AVX512-VNNI:
// int8_attention.h); the documents with one new token (decode) stay float32.
at::Tensor shared_prefix_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor q_cu,
                                   at::Tensor own_base, at::Tensor own_start,
                                   at::Tensor prefix_start, at::Tensor prefix_len, double scale,
                                   bool int8_attention) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(), "q [N,Hq,D], k/v [T,Hkv,D]");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && q.size(2) == k.size(2), "incompatible heads");
  TORCH_CHECK(q.size(2) == 64 || q.size(2) == 128, "head_dim 64 or 128");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "last dim contiguous");
  TORCH_CHECK(k.strides() == v.strides(), "k and v laid out alike");
  TORCH_CHECK(!int8_attention || (q.scalar_type() == at::kFloat &&
                               shared_prefix_attention_int8_available()),
              "int8 attention: float32 on a CPU with AVX512-VNNI only");
  TORCH_CHECK(k.scalar_type() == v.scalar_type() &&
                  (q.scalar_type() == k.scalar_type() ||
                   (q.scalar_type() == at::kFloat && k.scalar_type() == at::kBFloat16 &&
                    (int8_attention || shared_prefix_attention_bf16_arena()))),
              "q, k, v of one dtype (or float32 queries over a bfloat16 arena: with int8 "
              "attention, or on a CPU without AVX-512)");
  const int64_t docs = own_base.numel();
  TORCH_CHECK(q_cu.numel() == docs + 1, "q_cu [B+1]");
  for (const auto& t : {q_cu, own_base, own_start, prefix_start, prefix_len})
    TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous(), "index tensors: int64");
  const int64_t real = q_cu.data_ptr<int64_t>()[docs];
  TORCH_CHECK(real <= q.size(0), "q_cu must end at most at the number of rows of q");
  auto out = at::empty_like(q);
  if (real < q.size(0)) out.narrow(0, real, q.size(0) - real).zero_();  // padding rows: zeros
  std::vector<int64_t> every(docs);
  for (int64_t b = 0; b < docs; ++b) every[b] = b;
  shared_prefix_attention_of(q, k, v, q_cu, own_base, own_start, prefix_start, prefix_len, scale,
                             every, out, int8_attention);
  return out;
}

// The rows of out of the documents `docs` (shared_prefix_attention's arguments, checked).
void shared_prefix_attention_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& q_cu, const at::Tensor& own_base,
                                const at::Tensor& own_start, const at::Tensor& prefix_start,
                                const at::Tensor& prefix_len, double scale,
                                const std::vector<int64_t>& docs, at::Tensor& out,
                                bool int8_attention) {
  const Rows m{q_cu.data_ptr<int64_t>(), own_base.data_ptr<int64_t>(),
               own_start.data_ptr<int64_t>(), prefix_start.data_ptr<int64_t>(),
               prefix_len.data_ptr<int64_t>(), q.size(1) / k.size(1), k.size(1)};
  int64_t one_token = 0;
  for (const int64_t b : docs) one_token += m.q_cu[b + 1] - m.q_cu[b] == 1;
  const bool per_document = decode_task_per_document(q.size(1), one_token);
  std::vector<Task> tasks;
  for (const int64_t b : docs) {
    const int64_t rows = (m.q_cu[b + 1] - m.q_cu[b]) * m.group;
    if (rows == m.group && per_document) {  // one new token, every head
      const int64_t cost = (m.prefix_len[b] + m.own_start[b] + 1) * k.size(1);
      tasks.push_back({b, -1, 0, cost, cost});
      continue;
    }
    for (int64_t h = 0; h < k.size(1); ++h) {
      const size_t first = tasks.size();
      int64_t group_cost = 0;
      for (int64_t r0 = 0; r0 < rows; r0 += MR) {
        const int64_t last = std::min(rows, r0 + MR) - 1;
        tasks.push_back({b, h, r0, m.prefix_len[b] + m.own_start[b] + last / m.group + 1});
        group_cost += tasks.back().cost;
      }
      for (size_t i = first; i < tasks.size(); ++i) tasks[i].group_cost = group_cost;
    }
  }
  // Handed out one at a time, (document, KV head) by (document, KV head), the one with the most
  // work first, and within one its tiles longest first: a document's keys are read from the
  // core's cache by its tiles after the first, and the two halves of a 2-core machine finish
  // together (the last tiles are the shortest of the smallest).
  std::sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return std::tie(b.group_cost, a.doc, a.head, b.cost) <
           std::tie(a.group_cost, b.doc, b.head, a.cost);
  });
#if defined(__AVX512F__)
  const float scale_log2 = static_cast<float>(scale) * LOG2E;  // these kernels: log2 units
#else
  const float scale_log2 = static_cast<float>(scale);  // the portable tile: natural units
#endif
  // T: q's and out's type; KV: the arena's (bfloat16 under float32 queries: int8 attention, or
  // the portable kernels)
  auto run = [&](auto tag, auto kv_tag, auto head_dim) {
    using T = decltype(tag);
    using KV = decltype(kv_tag);
    constexpr int D = decltype(head_dim)::value;
    const T* qp = q.data_ptr<T>();
    const KV* kp = k.data_ptr<KV>();
    const KV* vp = v.data_ptr<KV>();
    T* op = out.data_ptr<T>();
    std::atomic<int64_t> next{0};
#if defined(__AVX512VNNI__)
    static std::atomic<uint64_t> calls{0};  // numbers each call's int8 keys and values
    const uint64_t call = int8_attention ? ++calls : 0;
#elif !defined(__AVX512F__)
    static std::atomic<uint64_t> calls{0};  // numbers each call's float32 copies of K and V
    const uint64_t call = std::is_same_v<KV, T> ? 0 : ++calls;
#endif
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      for (int64_t i; (i = next.fetch_add(1)) < static_cast<int64_t>(tasks.size());) {
        const Task& t = tasks[i];
        if (m.q_cu[t.doc + 1] - m.q_cu[t.doc] == 1) {
          run_single<T, D, KV>(t, qp, q.stride(0), q.stride(1), kp, vp, k.stride(0), k.stride(1),
                               op, out.stride(0), out.stride(1), m, scale_log2);
          continue;
        }
#if defined(__AVX512VNNI__)
        if constexpr (std::is_same_v<T, float>) {
          if (int8_attention) {
            run_tile<float, D, true, KV>(t, qp, q.stride(0), q.stride(1), kp, vp, k.stride(0),
                                         k.stride(1), op, out.stride(0), out.stride(1), m,
                                         scale_log2, call);
            continue;
          }
        }
#endif
#if !defined(__AVX512F__)
        run_tile<T, D, KV>(t, qp, q.stride(0), q.stride(1), kp, vp, k.stride(0), k.stride(1), op,
                           out.stride(0), out.stride(1), m, scale_log2, call);
#else
        if constexpr (std::is_same_v<T, KV>)
          run_tile<T, D>(t, qp, q.stride(0), q.stride(1), kp, vp, k.stride(0), k.stride(1), op,
                         out.stride(0), out.stride(1), m, scale_log2);
#endif
      }
    });
  };
  const bool d64 = q.size(2) == 64;
  if (q.scalar_type() == at::kFloat) {
#if defined(__AVX512VNNI__) || !defined(__AVX512F__)
    if (k.scalar_type() == at::kBFloat16) {  // checked: int8 attention, or the portable kernels
      if (d64) run(float{}, c10::BFloat16{}, std::integral_constant<int, 64>{});
      else run(float{}, c10::BFloat16{}, std::integral_constant<int, 128>{});
      return;
    }
#endif
    if (d64) run(float{}, float{}, std::integral_constant<int, 64>{});
    else run(float{}, float{}, std::integral_constant<int, 128>{});
    return;
  }
#if defined(__AVX512BF16__)
  if (q.scalar_type() == at::kBFloat16) {
    if (d64) run(c10::BFloat16{}, c10::BFloat16{}, std::integral_constant<int, 64>{});
    else run(c10::BFloat16{}, c10::BFloat16{}, std::integral_constant<int, 128>{});
    return;
  }
#endif
  TORCH_CHECK(false, "shared_prefix_attention: not built for ", q.scalar_type(), " on this CPU");
}
