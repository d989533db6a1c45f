// The float32 tile of shared-prefix attention for CPUs without AVX-512 (AVX2 and older), in
// GCC vector extensions: 8-float vectors that the compiler maps onto this machine's registers
// (-march=native). Same algorithm as the AVX-512 kernel of shared_prefix_attention.cpp: rows
// (new token i, query head g) in the lanes, 16 per tile (two vectors), an online softmax over
// blocks of KB keys in float32, the causal band masked per lane, keys and values read from the
// arena in place. Documents with one new token use the same tile (decode has its own kernel,
// decode_attention.cpp, which the Python side prefers for pure decode steps on these CPUs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

constexpr int MR = 16;  // rows per tile: two vectors of 8 lanes
constexpr int KB = 32;  // keys per softmax block
constexpr int NR = 4;   // keys per S micro-kernel call
constexpr float LOG2E = 1.4426950408889634f;

inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8i splat_i(int32_t x) { return v8i{x, x, x, x, x, x, x, x}; }
inline v8f load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }

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

struct Rows {  // the metadata of one call, per document
  const int64_t *q_cu, *own_base, *own_start, *prefix_start, *prefix_len;
  int64_t group;
};

struct Task {
  int64_t doc, head, row0, cost;
};

// s [NR][MR] = Q K^T for NR keys: qp [D][MR] the tile's rows, each key's elements broadcast.
template <int D>
inline void scores(const float* qp, const float* const* keys, float* s) {
  v8f acc[NR][2];
  for (int j = 0; j < NR; ++j) acc[j][0] = acc[j][1] = splat(0.0f);
  for (int d = 0; d < D; ++d) {
    const v8f q0 = load(qp + d * MR), q1 = load(qp + d * MR + 8);
    for (int j = 0; j < NR; ++j) {
      const v8f k = splat(keys[j][d]);
      acc[j][0] += q0 * k;
      acc[j][1] += q1 * k;
    }
  }
  for (int j = 0; j < NR; ++j) {
    store(s + j * MR, acc[j][0]);
    store(s + j * MR + 8, acc[j][1]);
  }
}

// o [D][MR] = o * alpha + P V for one block: s [KB][MR] holds P for nk keys. The block's sum
// starts from zero and is added once (two-level summation: float32 error grows with the
// block length and the number of blocks, not with all keys in one chain).
template <int D>
inline void accumulate(float* o, const float* s, int nk, const float* const* v_rows, v8f alpha0,
                       v8f alpha1) {
  constexpr int DD = 4;
  for (int d0 = 0; d0 < D; d0 += DD) {
    v8f acc[DD][2];
    for (int dd = 0; dd < DD; ++dd) acc[dd][0] = acc[dd][1] = splat(0.0f);
    for (int j = 0; j < nk; ++j) {
      const v8f p0 = load(s + j * MR), p1 = load(s + j * MR + 8);
      for (int dd = 0; dd < DD; ++dd) {
        const v8f x = splat(v_rows[j][d0 + dd]);
        acc[dd][0] += p0 * x;
        acc[dd][1] += p1 * x;
      }
    }
    for (int dd = 0; dd < DD; ++dd) {
      store(o + (d0 + dd) * MR, load(o + (d0 + dd) * MR) * alpha0 + acc[dd][0]);
      store(o + (d0 + dd) * MR + 8, load(o + (d0 + dd) * MR + 8) * alpha1 + acc[dd][1]);
    }
  }
}

template <typename T, int D>
void run_tile(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const T* k, const T* v,
              int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1, const Rows& m,
              float softmax_scale) {
  static_assert(std::is_same_v<T, float>, "the portable kernel is float32 only");
  alignas(32) float qp[D * MR];
  alignas(32) float s[KB * MR];
  alignas(32) float o[D * MR];
  alignas(32) int32_t limit[MR];
  const float* key_rows[KB];
  const float* value_rows[KB];
  v8i keep0[KB], keep1[KB];

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
  v8i limit0, limit1;
  std::memcpy(&limit0, limit, sizeof(limit0));
  std::memcpy(&limit1, limit + 8, sizeof(limit1));

  std::memset(o, 0, sizeof(o));
  const float inf = std::numeric_limits<float>::infinity();
  v8f m0 = splat(-inf), m1 = m0, l0 = splat(0.0f), l1 = l0;
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
      const int64_t arena_row = key < plen ? m.prefix_start[b] + key : m.own_base[b] + key - plen;
      key_rows[j] = k + arena_row * kv_s0 + t.head * kv_s1;
      value_rows[j] = v + arena_row * kv_s0 + t.head * kv_s1;
    }
    for (int j = 0; j < nk; j += NR) scores<D>(qp, key_rows + j, s + j * MR);
    // mask the causal band, block maximum (s keeps the raw scores: each probability is
    // exp2 of (s * scale - max) * log2(e), the first part one fused multiply-add)
    v8f bm0 = splat(-inf), bm1 = bm0;
    for (int j = 0; j < nk; ++j) {
      const v8f s0 = load(s + j * MR) * scale, s1 = load(s + j * MR + 8) * scale;
      keep0[j] = keep1[j] = splat_i(-1);
      if (j0 + j >= unmasked) {
        const v8i own = splat_i(static_cast<int32_t>(j0 + j - plen));
        keep0[j] = own <= limit0;
        keep1[j] = own <= limit1;
      }
      bm0 = keep0[j] ? vmax(bm0, s0) : bm0;
      bm1 = keep1[j] ? vmax(bm1, s1) : bm1;
    }
    const v8f new0 = vmax(m0, bm0), new1 = vmax(m1, bm1);
    const v8f alpha0 = exp2_ps((m0 - new0) * log2e), alpha1 = exp2_ps((m1 - new1) * log2e);
    m0 = new0;
    m1 = new1;
    v8f block0 = splat(0.0f), block1 = block0;  // this block's probability sums
    for (int j = 0; j < nk; ++j) {
      const v8f p0 = keep0[j] ? exp2_ps((load(s + j * MR) * scale - m0) * log2e) : splat(0.0f);
      const v8f p1 = keep1[j] ? exp2_ps((load(s + j * MR + 8) * scale - m1) * log2e) : splat(0.0f);
      block0 += p0;
      block1 += p1;
      store(s + j * MR, p0);
      store(s + j * MR + 8, p1);
    }
    l0 = l0 * alpha0 + block0;
    l1 = l1 * alpha1 + block1;
    accumulate<D>(o, s, nk, value_rows, alpha0, alpha1);
  }
  alignas(32) float inv_l[MR];
  store(inv_l, 1.0f / l0);
  store(inv_l + 8, 1.0f / l1);
  for (int r = 0; r < tile_rows; ++r) {
    const int64_t i = (t.row0 + r) / g_size, g = (t.row0 + r) % g_size;
    T* dst = out + (m.q_cu[b] + i) * o_s0 + (t.head * g_size + g) * o_s1;
    for (int d = 0; d < D; ++d) dst[d] = o[d * MR + r] * inv_l[r];
  }
}

template <typename T, int D>
void run_single(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const T* k, const T* v,
                int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1, const Rows& m,
                float softmax_scale) {
  run_tile<T, D>(t, q, q_s0, q_s1, k, v, kv_s0, kv_s1, out, o_s0, o_s1, m, softmax_scale);
}

}  // namespace
