// The float32 tile of shared-prefix attention for CPUs without AVX-512 (AVX2 and older), in
// GCC vector extensions: 8-float vectors that the compiler maps onto this machine's registers
// (-march=native). Same algorithm as the AVX-512 kernel of shared_prefix_attention.cpp: rows
// (new token i, query head g) in the lanes, 16 per tile (two vectors), an online softmax over
// blocks of KB keys in float32, the causal band masked per lane, keys and values read from the
// arena in place. Documents with one new token (decode) have their own path, run_single
// (shared_prefix_attention_portable_decode.h).
// A bfloat16 arena under float32 queries (quantize="int8" on these CPUs: half the K/V bytes a
// decode step reads): the tiles read a float32 copy of their (document, KV head)'s keys and
// values, made by the first of its tiles a thread runs; the arithmetic stays float32.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// Tile shape, measured on a 2-core Zen 3 (float32, 16 documents x 190 tokens over a 100-token
// prefix, 9/3 heads of 64): 16 rows and 6 keys per S micro-kernel call (12 accumulators, enough
// to hide the FMA latency) ran 84-85 GFLOP/s against 76 for 16 rows x 4 keys; 24 rows x 4 keys
// the same as 16 x 6.
constexpr int RV = 2;       // vectors of 8 rows per tile
constexpr int MR = 8 * RV;  // rows per tile
constexpr int KB = 48;      // keys per softmax block (a multiple of NR)
constexpr int NR = 6;       // keys per S micro-kernel call
constexpr float LOG2E = 1.4426950408889634f;

inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8i splat_i(int32_t x) { return v8i{x, x, x, x, x, x, x, x}; }
inline v8f load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
// 8 bfloat16 values widened to float32 exactly (zero-extended, shifted into the high half)
inline v8f load(const c10::BFloat16* p) {
  typedef uint16_t v8u16 __attribute__((vector_size(16)));
  v8u16 h;
  std::memcpy(&h, p, sizeof(h));
  const v8i bits = __builtin_convertvector(h, v8i) << 16;
  v8f v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
// D values of a bfloat16 arena row widened into dst (exact)
template <int D>
inline void widen(float* dst, const c10::BFloat16* src) {
  for (int d = 0; d < D; d += 8) store(dst + d, load(src + d));
}

// 2^t for t <= 0: t = n + f with f in [-0.5, 0.5], 2^f by its degree-6 Taylor series (relative
// error ~1e-7), 2^n built in the exponent bits. t is clamped to [-126, 0].
inline v8f exp2_ps(v8f t) {
  t = vmax(t, splat(-126.0f));
  t = t < 0.0f ? t : splat(0.0f);
  const v8i neg_n = __builtin_convertvector(splat(0.5f) - t, v8i);  // round(-t), -t >= 0
  const v8f f = t + __builtin_convertvector(neg_n, v8f);
  v8f p = splat(1.5403530393381606e-4f);
  p = p * f + 1.3333558146428441e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const v8i bits = (splat_i(127) - neg_n) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// s [NR][MR] = Q K^T for NR keys: qp [D][MR] the tile's rows, each key's elements broadcast.
template <int D>
inline void scores(const float* qp, const float* const* keys, float* s) {
  v8f acc[NR][RV];
  for (int j = 0; j < NR; ++j)
    for (int r = 0; r < RV; ++r) acc[j][r] = splat(0.0f);
  for (int d = 0; d < D; ++d) {
    v8f qd[RV];
    for (int r = 0; r < RV; ++r) qd[r] = load(qp + d * MR + 8 * r);
    for (int j = 0; j < NR; ++j) {
      const v8f k = splat(keys[j][d]);
      for (int r = 0; r < RV; ++r) acc[j][r] += qd[r] * k;
    }
  }
  for (int j = 0; j < NR; ++j)
    for (int r = 0; r < RV; ++r) store(s + j * MR + 8 * r, acc[j][r]);
}

// o [D][MR] = o * alpha + P V for one block: s [KB][MR] holds P for nk keys. The block's sum
// starts from zero and is added once (two-level summation: float32 error grows with the
// block length and the number of blocks, not with all keys in one chain). Columns d0 ..
// d0 + DD - 1 of o per pass over the keys: DD * RV accumulators.
template <int DD>
inline void accumulate_columns(float* o, const float* s, int nk, const float* const* v_rows,
                               const v8f* alpha, int d0) {
  v8f acc[DD][RV];
  for (int dd = 0; dd < DD; ++dd)
    for (int r = 0; r < RV; ++r) acc[dd][r] = splat(0.0f);
  for (int j = 0; j < nk; ++j) {
    v8f p[RV];
    for (int r = 0; r < RV; ++r) p[r] = load(s + j * MR + 8 * r);
    for (int dd = 0; dd < DD; ++dd) {
      const v8f x = splat(v_rows[j][d0 + dd]);
      for (int r = 0; r < RV; ++r) acc[dd][r] += p[r] * x;
    }
  }
  for (int dd = 0; dd < DD; ++dd)
    for (int r = 0; r < RV; ++r) {
      float* dst = o + (d0 + dd) * MR + 8 * r;
      store(dst, load(dst) * alpha[r] + acc[dd][r]);
    }
}

// Six columns a pass: 12 accumulators (with P's two vectors and the broadcast, 15 of AVX2's 16
// registers), enough independent sums to keep two FMA pipes of latency 5 busy.
template <int D>
inline void accumulate(float* o, const float* s, int nk, const float* const* v_rows,
                       const v8f* alpha) {
  constexpr int DD = 6;
  for (int d0 = 0; d0 + DD <= D; d0 += DD) accumulate_columns<DD>(o, s, nk, v_rows, alpha, d0);
  if constexpr (D % DD != 0)
    accumulate_columns<D % DD>(o, s, nk, v_rows, alpha, D - D % DD);
}

// This thread's float32 copy of the keys and values of task t's (document, KV head) from a
// bfloat16 arena, in call `call`: rows 0..n-1 of D, key j of the document at row j.
struct FloatKV {
  uint64_t call = 0;
  int64_t doc = -1, head = -1;
  std::vector<float> k, v;
};

template <int D>
const FloatKV& float_kv(uint64_t call, const Task& t, const c10::BFloat16* k,
                        const c10::BFloat16* v, int64_t kv_s0, int64_t kv_s1, const Rows& m) {
  thread_local FloatKV kv;
  if (kv.call != call || kv.doc != t.doc || kv.head != t.head) {
    const int64_t b = t.doc, n = m.prefix_len[b] + m.own_start[b] + m.q_cu[b + 1] - m.q_cu[b];
    kv.k.resize(n * D);
    kv.v.resize(n * D);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = m.arena_row(b, j) * kv_s0 + t.head * kv_s1;
      widen<D>(kv.k.data() + j * D, k + at);
      widen<D>(kv.v.data() + j * D, v + at);
    }
    kv.call = call;
    kv.doc = b;
    kv.head = t.head;
  }
  return kv;
}

// One tile. KV: the arena's type (bfloat16 under float32 queries: read through float_kv, whose
// copies `call` numbers).
template <typename T, int D, typename KV = T>
void run_tile(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const KV* k, const KV* v,
              int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1, const Rows& m,
              float softmax_scale, uint64_t call = 0) {
  static_assert(std::is_same_v<T, float>, "the portable kernel is float32 only");
  static_assert(std::is_same_v<KV, float> || std::is_same_v<KV, c10::BFloat16>,
                "a float32 or bfloat16 arena");
  const FloatKV* copy = nullptr;
  if constexpr (!std::is_same_v<KV, float>) copy = &float_kv<D>(call, t, k, v, kv_s0, kv_s1, m);
  alignas(32) float qp[D * MR];
  alignas(32) float s[KB * MR];
  alignas(32) float o[D * MR];
  alignas(32) int32_t limit[MR];
  const float* key_rows[KB];
  const float* value_rows[KB];
  v8i keep[KB][RV];

  const int64_t b = t.doc, g_size = m.group;
  const int64_t n_new = m.q_cu[b + 1] - m.q_cu[b], rows = n_new * g_size;
  const int64_t tile_rows = std::min<int64_t>(MR, rows - t.row0);
  const int64_t i0 = t.row0 / g_size, i1 = (t.row0 + tile_rows - 1) / g_size;
  const int64_t start = m.own_start[b], plen = m.prefix_len[b];
  std::memset(qp, 0, sizeof(qp));  // rows past the tile are zero (never written out)
  for (int r = 0; r < tile_rows; ++r) {
    const int64_t i = (t.row0 + r) / g_size, g = (t.row0 + r) % g_size;
    const float* row = q + (m.q_cu[b] + i) * q_s0 + (t.head * g_size + g) * q_s1;
    for (int d = 0; d < D; ++d) qp[d * MR + r] = row[d];
    limit[r] = static_cast<int32_t>(start + i);  // own keys 0..start+i are visible
  }
  for (int r = tile_rows; r < MR; ++r) limit[r] = std::numeric_limits<int32_t>::max();
  v8i lim[RV];
  for (int r = 0; r < RV; ++r) std::memcpy(&lim[r], limit + 8 * r, sizeof(lim[r]));

  std::memset(o, 0, sizeof(o));
  const float inf = std::numeric_limits<float>::infinity();
  v8f run_max[RV], run_sum[RV];
  for (int r = 0; r < RV; ++r) {
    run_max[r] = splat(-inf);
    run_sum[r] = splat(0.0f);
  }
  // Scores stay in natural units (the softmax scale is exact for power-of-two head dims);
  // only the difference to the running maximum goes to log2 units, so the rounding of log2(e)
  // does not scale every logit.
  const v8f scale = splat(softmax_scale), log2e = splat(LOG2E);
  const int64_t n_keys = plen + start + i1 + 1;
  const int64_t unmasked = plen + start + i0 + 1;  // keys below this are visible to every row
  for (int64_t j0 = 0; j0 < n_keys; j0 += KB) {
    const int nk = static_cast<int>(std::min<int64_t>(KB, n_keys - j0));
    for (int j = 0; j < KB; ++j) {
      const int64_t key = j0 + std::min(j, nk - 1);  // past the end: repeat the last key
      if constexpr (!std::is_same_v<KV, float>) {
        key_rows[j] = copy->k.data() + key * D;
        value_rows[j] = copy->v.data() + key * D;
      } else {
        const int64_t arena_row = m.arena_row(b, key);
        key_rows[j] = k + arena_row * kv_s0 + t.head * kv_s1;
        value_rows[j] = v + arena_row * kv_s0 + t.head * kv_s1;
      }
    }
    for (int j = 0; j < nk; j += NR) scores<D>(qp, key_rows + j, s + j * MR);
    // mask the causal band, block maximum (s keeps the raw scores: each probability is
    // exp2 of (s * scale - max) * log2(e), the first part one fused multiply-add)
    v8f block_max[RV];
    for (int r = 0; r < RV; ++r) block_max[r] = splat(-inf);
    for (int j = 0; j < nk; ++j) {
      const bool all = j0 + j < unmasked;
      const v8i own = splat_i(static_cast<int32_t>(j0 + j - plen));
      for (int r = 0; r < RV; ++r) {
        keep[j][r] = all ? splat_i(-1) : own <= lim[r];
        const v8f x = load(s + j * MR + 8 * r) * scale;
        block_max[r] = keep[j][r] ? vmax(block_max[r], x) : block_max[r];
      }
    }
    v8f alpha[RV], block_sum[RV];
    for (int r = 0; r < RV; ++r) {
      const v8f new_max = vmax(run_max[r], block_max[r]);
      alpha[r] = exp2_ps((run_max[r] - new_max) * log2e);
      run_max[r] = new_max;
      block_sum[r] = splat(0.0f);
    }
    for (int j = 0; j < nk; ++j)
      for (int r = 0; r < RV; ++r) {
        const v8f p = keep[j][r] ? exp2_ps((load(s + j * MR + 8 * r) * scale - run_max[r]) * log2e)
                                 : splat(0.0f);
        block_sum[r] += p;
        store(s + j * MR + 8 * r, p);
      }
    for (int r = 0; r < RV; ++r) run_sum[r] = run_sum[r] * alpha[r] + block_sum[r];
    accumulate<D>(o, s, nk, value_rows, alpha);
  }
  alignas(32) float inv_l[MR];
  for (int r = 0; r < RV; ++r) store(inv_l + 8 * r, 1.0f / run_sum[r]);
  for (int r = 0; r < tile_rows; ++r) {
    const int64_t i = (t.row0 + r) / g_size, g = (t.row0 + r) % g_size;
    T* dst = out + (m.q_cu[b] + i) * o_s0 + (t.head * g_size + g) * o_s1;
    for (int d = 0; d < D; ++d) dst[d] = o[d * MR + r] * inv_l[r];
  }
}

}  // namespace
