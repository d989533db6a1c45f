// The portable kernel's path for documents with one new token (decode steps, or one-token
// documents beside a prefill), for CPUs without AVX-512: float32, GCC vector extensions, the
// head dimension in the lanes (the tile of shared_prefix_attention_portable.h would fill G of
// its 16 rows and compute the rest for nothing). K/V: a float32 arena, or a bfloat16 one under
// float32 queries, each block of it widened once into a float32 copy that all of the task's
// query heads read (these steps are bound by the K/V bytes they read from memory).
#pragma once

#include "next_block_prefetch.h"
#include "shared_prefix_attention_portable.h"

namespace {

#if defined(__clang__)
#define ERANK_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define ERANK_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, v8i{__VA_ARGS__})
#endif

// Pairwise sums within each 128-bit half, as x86's haddps: {a0+a1, a2+a3, b0+b1, b2+b3, a4+a5,
// a6+a7, b4+b5, b6+b7}.
inline v8f hadd(v8f a, v8f b) {
  return ERANK_SHUFFLE(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         ERANK_SHUFFLE(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}

// Lane j of the result = the sum of p[j]'s 8 lanes (eight horizontal sums in nine operations).
inline v8f sum8(const v8f* p) {
  const v8f a = hadd(hadd(p[0], p[1]), hadd(p[2], p[3]));
  const v8f b = hadd(hadd(p[4], p[5]), hadd(p[6], p[7]));
  return ERANK_SHUFFLE(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
         ERANK_SHUFFLE(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
}

// Lane-wise maximum and sum of a vector's 8 lanes, in every lane.
inline v8f all_max(v8f x) {
  x = vmax(x, ERANK_SHUFFLE(x, x, 4, 5, 6, 7, 0, 1, 2, 3));
  x = vmax(x, ERANK_SHUFFLE(x, x, 2, 3, 0, 1, 6, 7, 4, 5));
  return vmax(x, ERANK_SHUFFLE(x, x, 1, 0, 3, 2, 5, 4, 7, 6));
}
inline v8f all_sum(v8f x) {
  x += ERANK_SHUFFLE(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
  x += ERANK_SHUFFLE(x, x, 2, 3, 0, 1, 6, 7, 4, 5);
  return x + ERANK_SHUFFLE(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
}

constexpr int SV = 4;       // the decode path's vectors of 8 keys' scores per block
constexpr int VB = 8 * SV;  // keys per block

// A document with one new token (a decode step), all its query heads in one task (head -1;
// one KV head's when the model has more query heads than MAX_Q_HEADS): each key row (every KV
// head's part, contiguous in the arena) is read once, in order, and used by every head. The
// head dimension sits in the lanes: each key's 8 partial sums, then 8 keys' sums reduced
// together, so 8 keys give one vector of scores per query head. The softmax's bookkeeping
// (maximum, rescaling, sum) is paid once per block of VB = 32 keys, four such vectors. (The
// tile above would fill G of its 16 rows and compute the rest for nothing, one KV head at a
// time.)
constexpr int MAX_Q_HEADS = 64;
inline bool decode_task_per_document(int64_t q_heads, int64_t) { return q_heads <= MAX_Q_HEADS; }

template <typename T, int D, typename KV = T>
void run_single(const Task& t, const T* q, int64_t q_s0, int64_t q_s1, const KV* k, const KV* v,
                int64_t kv_s0, int64_t kv_s1, T* out, int64_t o_s0, int64_t o_s1, const Rows& m,
                float softmax_scale) {
  static_assert(std::is_same_v<T, float>, "the portable kernel is float32 only");
  const int64_t b = t.doc, groups = m.group;
  // query heads h0 .. h0 + heads - 1: all of them, or those of KV head t.head
  const int64_t h0 = t.head < 0 ? 0 : t.head * groups;
  const int64_t heads = t.head < 0 ? m.kv_heads * groups : groups;
  TORCH_CHECK(heads <= MAX_Q_HEADS, "at most ", MAX_Q_HEADS, " query heads per KV head");
  const int64_t plen = m.prefix_len[b], n_keys = plen + m.own_start[b] + 1;
  alignas(32) float o[MAX_Q_HEADS][D];
  alignas(32) float p[MAX_Q_HEADS][VB];
  float run_max[MAX_Q_HEADS], run_sum[MAX_Q_HEADS], alpha[MAX_Q_HEADS];
  const float* key_rows[VB];
  const float* value_rows[VB];
  // A bfloat16 arena: each block's rows of the task's KV heads widened into `wide` (row j: the
  // KV heads' D values each, keys then values); query head h0 + h reads KV head (h0 + h) /
  // groups at ((h0 + h) / groups - head_base) * head_stride of its row.
  constexpr bool WIDEN = !std::is_same_v<KV, float>;
  const int64_t kv_lo = h0 / groups, kv_n = heads / groups;
  const int64_t head_base = WIDEN ? kv_lo : 0, head_stride = WIDEN ? D : kv_s1;
  thread_local std::vector<float> wide;
  if constexpr (WIDEN) wide.resize(2 * VB * kv_n * D);
  // the next blocks' rows: an arena row's bytes, then where this task's KV heads lie in it
  constexpr int64_t F = sizeof(KV);
  // Shares of a block's work: per head, a vector of 8 keys' scores counts 4 (SV of them), a
  // key's value row 1 (VB of them); enough for all the K and V lines (SmolLM2: 2 and 8).
  NextBlock next(k, v, kv_s0 * F, h0 / groups * kv_s1 * F,
                 ((heads / groups - 1) * kv_s1 + D) * F, heads * (4 * SV + VB), m, b);
  const float* q_row = q + m.q_cu[b] * q_s0 + h0 * q_s1;
  const float inf = std::numeric_limits<float>::infinity();
  const v8i lane = v8i{0, 1, 2, 3, 4, 5, 6, 7};
  for (int64_t h = 0; h < heads; ++h) {
    run_max[h] = -inf;
    run_sum[h] = 0.0f;
    std::memset(o[h], 0, sizeof(o[h]));
  }
  for (int64_t j0 = 0; j0 < n_keys; j0 += VB) {
    const int nk = static_cast<int>(std::min<int64_t>(VB, n_keys - j0));
    for (int j = 0; j < VB; ++j) {
      const int64_t key = j0 + std::min(j, nk - 1);  // past the end: repeat the last key
      const int64_t row = m.arena_row(b, key);
      if constexpr (WIDEN) {
        float* wk = wide.data() + std::min(j, nk - 1) * kv_n * D;
        float* wv = wk + VB * kv_n * D;
        if (j < nk)
          for (int64_t h = 0; h < kv_n; ++h) {
            const int64_t at = row * kv_s0 + (kv_lo + h) * kv_s1;
            widen<D>(wk + h * D, k + at);
            widen<D>(wv + h * D, v + at);
          }
        key_rows[j] = wk;
        value_rows[j] = wv;
      } else {
        key_rows[j] = k + row * kv_s0;
        value_rows[j] = v + row * kv_s0;
      }
    }
    const int vectors = (nk + 7) / 8;  // score vectors holding a visible key
    next.start(j0 + VB, std::max<int64_t>(0, std::min<int64_t>(VB, n_keys - j0 - VB)));
    for (int64_t h = 0; h < heads; ++h) {  // query head h0 + h reads KV head (h0 + h) / groups
      const float* qh = q_row + h * q_s1;
      const int64_t kv = ((h0 + h) / groups - head_base) * head_stride;
      v8f s[SV];
      v8f block_max = splat(-inf);
      for (int c = 0; c < vectors; ++c) {
        v8f partial[8];  // one 8-lane slice of q at a time against the 8 keys' slices
        for (int j = 0; j < 8; ++j) partial[j] = splat(0.0f);
        for (int d = 0; d < D; d += 8) {
          const v8f qd = load(qh + d);
          for (int j = 0; j < 8; ++j) partial[j] += qd * load(key_rows[8 * c + j] + kv + d);
        }
        s[c] = lane + 8 * c < nk ? sum8(partial) * softmax_scale : splat(-inf);
        next.step(4);
        block_max = vmax(block_max, s[c]);
      }
      const float new_max = std::max(run_max[h], all_max(block_max)[0]);
      v8f block_sum = splat(0.0f);
      for (int c = 0; c < vectors; ++c) {
        const v8f e = lane + 8 * c < nk ? exp2_ps((s[c] - new_max) * LOG2E) : splat(0.0f);
        block_sum += e;
        store(p[h] + 8 * c, e);
      }
      alpha[h] = std::exp2((run_max[h] - new_max) * LOG2E);  // 0 for the first block
      run_sum[h] = run_sum[h] * alpha[h] + all_sum(block_sum)[0];
      run_max[h] = new_max;
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kv = ((h0 + h) / groups - head_base) * head_stride;
      v8f acc[D / 8];
      for (int c = 0; c < D / 8; ++c) acc[c] = splat(0.0f);
      for (int j = 0; j < nk; ++j) {
        const v8f pj = splat(p[h][j]);
        const float* value = value_rows[j] + kv;
        for (int c = 0; c < D / 8; ++c) acc[c] += pj * load(value + 8 * c);
        next.step();
      }
      const v8f a = splat(alpha[h]);
      for (int c = 0; c < D / 8; ++c) store(o[h] + 8 * c, load(o[h] + 8 * c) * a + acc[c]);
    }
  }
  T* out_row = out + m.q_cu[b] * o_s0 + h0 * o_s1;
  for (int64_t h = 0; h < heads; ++h) {
    const float inv = 1.0f / run_sum[h];
    for (int d = 0; d < D; ++d) out_row[h * o_s1 + d] = o[h][d] * inv;
  }
}

}  // namespace
