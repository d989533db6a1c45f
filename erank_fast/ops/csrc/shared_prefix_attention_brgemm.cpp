// Shared-prefix attention for prefill steps in bfloat16, its two products on AMX tiles: the same
// result as shared_prefix_attention.cpp (every new token of every document against its query's
// prefix rows and causally its own rows of the K/V arena).
//
// One task is (document, KV head). Its keys are packed in the layouts the tiles read (pairs of
// bfloat16, "VNNI"), in one buffer per product: the prefix's keys first (packed once per (query
// prefix, KV head) for all its documents, then copied; padded to KB keys), the document's own
// after them. Then per tile of rows (a row being (new token i, query head g of this KV head's
// group), token-major):
//   S = Q K^T over the keys the tile's last token sees (float32), the masked softmax in float32
//   (exp2 in log2 units), P rounded to bfloat16, O = P V (float32, reduced in the tiles),
//   out = O / l rounded once.
// The products run on raw tile instructions, 32 rows at a time (scores, values), where the
// process may use AMX; otherwise (or with tiles=false) on oneDNN's batch-reduce GEMM
// micro-kernels (ATen's cpublas::brgemm), one call per product and tile of up to 64 rows. Both
// compute the same sums in the same order: the same results, bit for bit (tested). On a 2-core
// Xeon with AMX the raw tiles ran a prefill step's attention 1.07-1.17x faster than the
// micro-kernels (their per-call dispatch and tile configuration); the tile unit and the
// softmax's vector work did not overlap there (interleaving them, as tile_linear does, measured
// no faster).
// Keys a row may not see (padding, own keys after its token) get probability 0.
// Documents with one new token (decode steps mixed into a prefill step) are left to the vector
// kernel's decode path (shared_prefix_attention_of). Rows of q past the documents' (padding)
// get zeros, as in shared_prefix_attention.
#include "erank_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>

#include "avx512_bf16.h"
#include "avx512_exp2.h"

namespace {

using erank_cpu::exp2_ps_bf16;
using erank_cpu::LOG2E;
using bf16 = c10::BFloat16;

constexpr int64_t MR = 64;  // rows per tile (at most)
// A prefix's keys are padded to a multiple of KB keys, and a tile's products run over a multiple
// of `Widths::step` keys (KB up to 512 keys, a sixteenth of the row above): on a 2-core Xeon with
// AMX, 32 ran prefill steps' attention 1.13-1.19x faster than 64 (less padding of an 80-token
// prefix, less past a tile's last token); 16 was within 3 % of 32.
constexpr int64_t KB = 32;

// The micro-kernels are made (and kept) per shape and leading dimension, so the shapes a call
// uses come from a bounded set whatever the documents' lengths: every row of keys and scores is
// `ld` long (64 or 96 times a power of two, at least the call's widest task, plus 64), and the
// keys a tile multiplies are a multiple of `step`: at most 24 shapes per product, tile height
// and ld.
struct Widths {
  int64_t ld, step;
  explicit Widths(int64_t widest) {
    for (int64_t pow2 = 64;; pow2 *= 2) {
      ld = pow2 >= widest ? pow2 : pow2 * 3 / 2;
      if (ld >= widest) break;
    }
    for (step = KB; step * 32 <= ld;) step *= 2;  // the largest power of two <= ld / 16
    ld += 64;  // rows a power of two apart share cache sets (1.1x slower at 512 keys)
  }
  int64_t round(int64_t keys) const { return (keys + step - 1) / step * step; }
};

// The first n keys at k, v of one KV head (rows `stride` elements apart), in the layouts the two
// products read, for `cols` keys (cols >= n, even; keys past n are zeros):
// kt = K^T as [D/2][ld][2] (pairs of dimensions, "VNNI"; S = Q K^T), ld >= cols columns apart;
// vt = V as [cols/2][D][2] (pairs of keys; P V).
template <int D>
void pack_keys(const bf16* k, const bf16* v, int64_t stride, int64_t n, int64_t cols,
               int64_t ld, bf16* kt, bf16* vt) {
  auto* kt32 = reinterpret_cast<uint32_t*>(kt);
  for (int p = 0; p < D / 2; ++p) std::fill(kt32 + p * ld + n, kt32 + p * ld + cols, 0u);
  std::memset(vt + n / 2 * 2 * D, 0, sizeof(bf16) * (cols - n / 2 * 2) * D);
  for (int64_t j = 0; j < n; ++j) {
    const auto* krow = reinterpret_cast<const uint32_t*>(k + j * stride);
    for (int p = 0; p < D / 2; ++p) kt32[p * ld + j] = krow[p];
  }
  // Two keys at a time: their rows interleaved element by element, 16 dimensions at a time.
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40,
                                      8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t j = 0; j < n; j += 2) {
    bf16* dst = vt + j * D;
    const bf16* a = v + j * stride;
    for (int d = 0; d < D; d += 32) {
      const __m512i x = _mm512_loadu_si512(a + d);
      const __m512i y = j + 1 < n ? _mm512_loadu_si512(a + stride + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + 2 * d, _mm512_permutex2var_epi16(x, lo, y));
      _mm512_storeu_si512(dst + 2 * d + 32, _mm512_permutex2var_epi16(x, hi, y));
    }
  }
}

// One row's weights from its float32 scores s: the keys visible to it are its prefix's [0, plen)
// and its own [pcols, pcols + own_seen); p [0, seen) gets their weights 2^(s scale_log2 - max),
// rounded to bfloat16, and zeros elsewhere. Returns 1 / the weights' sum.
inline float softmax_row(const float* s, bf16* p, int64_t plen, int64_t pcols, int64_t own_seen,
                         int64_t seen, float scale_log2) {
  const int64_t runs[2][2] = {{0, plen}, {pcols, pcols + own_seen}};
  // f(j, mask) on each 16 keys of a run (the last ones masked); returns where it stopped.
  auto each_16 = [](const int64_t* run, auto f) {
    int64_t j = run[0];
    for (; j + 16 <= run[1]; j += 16) f(j, __mmask16(0xFFFF));
    if (j < run[1]) {
      f(j, __mmask16((1u << (run[1] - j)) - 1));
      j += 16;
    }
    return j;
  };
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (const auto& run : runs)
    each_16(run, [&](int64_t j, __mmask16 keep) {
      mx = _mm512_mask_max_ps(mx, keep, mx, _mm512_loadu_ps(s + j));
    });
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * scale_log2);
  const __m512 sc = _mm512_set1_ps(scale_log2);
  __m512 sum = _mm512_setzero_ps();
  auto weights = [&](int64_t j, __mmask16 keep) {  // 16 weights from key j, stored as bf16
    const __m512 t = _mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, m);
    const __m512 e = _mm512_maskz_mov_ps(keep, exp2_ps_bf16(t));
    sum = _mm512_add_ps(sum, e);
    erank_cpu::store16(p + j, e);
  };
  const int64_t zero_from[2] = {each_16(runs[0], weights), each_16(runs[1], weights)};
  std::memset(p + zero_from[0], 0, sizeof(bf16) * (pcols - zero_from[0]));
  std::memset(p + zero_from[1], 0, sizeof(bf16) * (seen - zero_from[1]));
  return 1.0f / _mm512_reduce_add_ps(sum);
}

// Row r of a tile's output: o (float32, D) times inv_l, rounded to dst.
template <int D>
inline void finish_row(const float* o, float inv_l, bf16* dst) {
  const __m512 w = _mm512_set1_ps(inv_l);
  for (int d = 0; d < D; d += 16)
    erank_cpu::store16(dst + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), w));
}

struct Doc {
  int64_t q_row, new_tokens, own_base, own_start, prefix;  // prefix: index into Prefixes
};

struct Prefixes {  // the distinct query prefixes of a call, packed once per KV head
  std::vector<int64_t> start, len, offset;  // offset: of the prefix's packed keys, head 0
  int64_t head_stride = 0;                   // elements between heads' packed keys
  std::vector<bf16> ks, vs;                  // as pack_keys writes them, ld = cols(p)
  int64_t cols(int64_t p) const { return (len[p] + KB - 1) / KB * KB; }
};

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// acc (tiles 0-3) = a x b over k: a 32 rows of bfloat16 (two 16-row tiles, lda elements
// apart), b 32 columns as 16-row tiles of bfloat16 pairs (ldb elements between pair rows; the
// next 32 of k start b_step elements on), stored to c (ldc floats apart).
inline void multiply_32x32(const bf16* a, int64_t lda, const bf16* b, int64_t ldb,
                           int64_t b_step, int64_t k, float* c, int64_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kk = 0; kk < k; kk += 32, b += b_step) {
    _tile_loadd(4, a + kk, lda * 2);
    _tile_loadd(5, a + 16 * lda + kk, lda * 2);
    _tile_loadd(6, b, ldb * 2);
    _tile_loadd(7, b + 32, ldb * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc * 4);
  _tile_stored(1, c + 16, ldc * 4);
  _tile_stored(2, c + 16 * ldc, ldc * 4);
  _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}
#endif

// A tile's scores s [mr][width] = q [mr][D] K^T over its first `seen` keys, and its output
// o [mr][D] = p [mr][width] V: on raw tiles (32 rows) or in one micro-kernel call each. Both
// sum in the same order (bfloat16 pairs into float32, 32 dimensions or keys per step): the same
// results, the raw tiles without the micro-kernels' per-call dispatch and tile configuration.
template <int D>
void scores(bool tiles, int64_t mr, int64_t seen, int64_t width, const bf16* q, const bf16* kt,
            float* s) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (tiles) {
    for (int64_t j = 0; j < seen; j += 32)  // K^T: pairs of dimensions, width apart
      multiply_32x32(q, D, kt + 2 * j, 2 * width, 32 * width, D, s + j, width);
    return;
  }
#endif
  at::native::cpublas::brgemm(mr, seen, D, D, width, width, false, q, kt, s, true);
}

template <int D>
void values(bool tiles, int64_t mr, int64_t seen, int64_t width, const bf16* p, const bf16* vt,
            float* o) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (tiles) {
    for (int64_t d = 0; d < D; d += 32)  // V: pairs of keys, D apart
      multiply_32x32(p, width, vt + 2 * d, 2 * D, 32 * D, seen, o + d, D);
    return;
  }
#endif
  at::native::cpublas::brgemm(mr, D, seen, width, D, D, false, p, vt, o, true);
}

template <int D>
void run_task(const Doc& doc, int64_t h, int64_t group, const bf16* q, int64_t q_s0,
              int64_t q_s1, const bf16* k, const bf16* v, int64_t k_s0, int64_t k_s1, bf16* out,
              int64_t o_s0, int64_t o_s1, const Prefixes& pre, const Widths& w, float scale_log2,
              std::vector<bf16>& kt, std::vector<bf16>& vt, std::vector<float>& s_buf,
              std::vector<bf16>& p_buf, std::vector<bf16>& q_buf, std::vector<float>& o_buf,
              bool tiles) {
  // All the keys of the task in one buffer per product, the prefix's first (copied from its
  // packing, shared by the query's documents), then the document's own: each product is then
  // one pass over them per tile.
  const int64_t own_keys = doc.own_start + doc.new_tokens;
  const int64_t plen = pre.len[doc.prefix], pcols = pre.cols(doc.prefix);
  const int64_t width = w.ld, cols = w.round(pcols + own_keys);  // cols <= width
  kt.resize(width * D);
  vt.resize(width * D);
  const bf16* pk = pre.ks.data() + pre.offset[doc.prefix] + h * pre.head_stride;
  for (int p = 0; p < D / 2; ++p)
    std::memcpy(kt.data() + 2 * p * width, pk + 2 * p * pcols, sizeof(bf16) * 2 * pcols);
  std::memcpy(vt.data(), pre.vs.data() + pre.offset[doc.prefix] + h * pre.head_stride,
              sizeof(bf16) * pcols * D);
  pack_keys<D>(k + doc.own_base * k_s0 + h * k_s1, v + doc.own_base * k_s0 + h * k_s1, k_s0,
               own_keys, cols - pcols, width, kt.data() + 2 * pcols, vt.data() + pcols * D);
  // Raw tiles take 32 rows at a time. The micro-kernels take 64: on a 2-core Xeon with AMX,
  // 1.07-1.13x the speed of 32-row tiles at prefill sizes (8-21 documents x 186-250 tokens); a
  // document of fewer than 128 rows keeps 32-row tiles, which pad it less.
  const int64_t rows = doc.new_tokens * group, mr = tiles || rows < 128 ? 32 : MR;
  s_buf.resize(mr * width);
  p_buf.resize(mr * width);
  q_buf.resize(mr * D);
  o_buf.resize(mr * D);
  for (int64_t r0 = 0; r0 < rows; r0 += mr) {
    const int64_t tile = std::min(mr, rows - r0);
    for (int64_t r = 0; r < mr; ++r) {
      bf16* dst = q_buf.data() + r * D;
      if (r < tile) {
        const int64_t t = (r0 + r) / group, g = (r0 + r) % group;
        std::memcpy(dst, q + (doc.q_row + t) * q_s0 + (h * group + g) * q_s1, sizeof(bf16) * D);
      } else {
        std::memset(dst, 0, sizeof(bf16) * D);
      }
    }
    // The keys the tile's last token sees (its prefix, its own up to itself), rounded up (to
    // 32 on raw tiles; to the bounded set of micro-kernel shapes otherwise).
    const int64_t last_token = (r0 + tile - 1) / group;
    const int64_t visible = pcols + doc.own_start + last_token + 1;
    const int64_t seen = tiles ? (visible + 31) / 32 * 32 : w.round(visible);
    scores<D>(tiles, mr, seen, width, q_buf.data(), kt.data(), s_buf.data());
    float inv_l[MR];
    for (int64_t r = 0; r < mr; ++r) {
      float* s = s_buf.data() + r * width;
      bf16* p = p_buf.data() + r * width;
      if (r >= tile) {  // padding rows: weights 0
        std::memset(p, 0, sizeof(bf16) * seen);
        inv_l[r] = 0.0f;
        continue;
      }
      // Visible: prefix keys [0, plen) and own keys [0, own_seen) (from column pcols).
      const int64_t own_seen = doc.own_start + (r0 + r) / group + 1;
      inv_l[r] = softmax_row(s, p, plen, pcols, own_seen, seen, scale_log2);
    }
    values<D>(tiles, mr, seen, width, p_buf.data(), vt.data(), o_buf.data());
    for (int64_t r = 0; r < tile; ++r) {
      const int64_t t = (r0 + r) / group, g = (r0 + r) % group;
      finish_row<D>(o_buf.data() + r * D, inv_l[r],
                    out + (doc.q_row + t) * o_s0 + (h * group + g) * o_s1);
    }
  }
}

template <int D>
at::Tensor run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& q_cu, const at::Tensor& own_base, const at::Tensor& own_start,
               const at::Tensor& prefix_start, const at::Tensor& prefix_len, double scale,
               bool tiles) {
  auto out = at::empty_like(q);
  const int64_t docs = own_base.numel(), kv_heads = k.size(1), group = q.size(1) / kv_heads;
  const int64_t* cu = q_cu.data_ptr<int64_t>();
  if (cu[docs] < q.size(0)) out.narrow(0, cu[docs], q.size(0) - cu[docs]).zero_();  // padding
  const int64_t *ob = own_base.data_ptr<int64_t>(), *os = own_start.data_ptr<int64_t>();
  const int64_t *ps = prefix_start.data_ptr<int64_t>(), *pl = prefix_len.data_ptr<int64_t>();
  Prefixes pre;
  std::map<std::pair<int64_t, int64_t>, int64_t> seen;
  std::vector<Doc> doc(docs);
  // Documents with one new token (decode, in a step that mixes it with prefill) take the vector
  // kernel's decode path: a tile would hold their few rows, after packing all their keys.
  std::vector<int64_t> single, tiled;
  int64_t cols_total = 0;
  for (int64_t b = 0; b < docs; ++b) {
    if (cu[b + 1] - cu[b] == 1) {
      single.push_back(b);
      continue;
    }
    tiled.push_back(b);
    auto [it, fresh] = seen.try_emplace({ps[b], pl[b]}, static_cast<int64_t>(pre.start.size()));
    if (fresh) {
      pre.start.push_back(ps[b]);
      pre.len.push_back(pl[b]);
      pre.offset.push_back(cols_total * D);
      cols_total += pre.cols(it->second);
    }
    doc[b] = {cu[b], cu[b + 1] - cu[b], ob[b], os[b], it->second};
  }
  pre.head_stride = cols_total * D;
  pre.ks.resize(pre.head_stride * kv_heads);
  pre.vs.resize(pre.head_stride * kv_heads);
  const bf16 *qp = q.data_ptr<bf16>(), *kp = k.data_ptr<bf16>(), *vp = v.data_ptr<bf16>();
  const int64_t n_pre = static_cast<int64_t>(pre.start.size());
  at::parallel_for(0, n_pre * kv_heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = i / kv_heads, h = i % kv_heads;
      const int64_t at_ = pre.offset[p] + h * pre.head_stride;
      pack_keys<D>(kp + pre.start[p] * k.stride(0) + h * k.stride(1),
                   vp + pre.start[p] * k.stride(0) + h * k.stride(1), k.stride(0), pre.len[p],
                   pre.cols(p), pre.cols(p), pre.ks.data() + at_, pre.vs.data() + at_);
    }
  });
  // Tasks longest first, handed out one at a time (the cores finish together).
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (cost, document * kv_heads + head)
  for (const int64_t b : tiled)
    for (int64_t h = 0; h < kv_heads; ++h)
      tasks.push_back({doc[b].new_tokens * (pre.len[doc[b].prefix] + doc[b].own_start +
                                            doc[b].new_tokens), b * kv_heads + h});
  std::sort(tasks.begin(), tasks.end(), std::greater<>());
  int64_t widest = 0;
  for (const int64_t b : tiled)
    widest = std::max(widest, pre.cols(doc[b].prefix) + doc[b].own_start + doc[b].new_tokens);
  const Widths widths(widest);
  const float scale_log2 = static_cast<float>(scale) * LOG2E;
  bf16* op = out.data_ptr<bf16>();
  std::atomic<int64_t> next{0};
  const bool use_tiles = tiles && erank_cpu::tiles_permitted();
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<bf16> kt, vt, p_buf, q_buf;
    std::vector<float> s_buf, o_buf;
    if (use_tiles) erank_cpu::load_tile_config();
    for (int64_t i; (i = next.fetch_add(1)) < static_cast<int64_t>(tasks.size());) {
      const int64_t task = tasks[i].second;
      run_task<D>(doc[task / kv_heads], task % kv_heads, group, qp, q.stride(0), q.stride(1),
                  kp, vp, k.stride(0), k.stride(1), op, out.stride(0), out.stride(1), pre,
                  widths, scale_log2, kt, vt, s_buf, p_buf, q_buf, o_buf, use_tiles);
    }
    at::native::cpublas::brgemm_release(true);
  });
  if (!single.empty())
    shared_prefix_attention_of(q, k, v, q_cu, own_base, own_start, prefix_start, prefix_len, scale,
                               single, out);
  return out;
}

}  // namespace

bool shared_prefix_attention_brgemm_available() {
  return at::native::cpublas::could_pack(at::kBFloat16);
}

at::Tensor shared_prefix_attention_brgemm(at::Tensor q, at::Tensor k, at::Tensor v,
                                          at::Tensor q_cu, at::Tensor own_base,
                                          at::Tensor own_start, at::Tensor prefix_start,
                                          at::Tensor prefix_len, double scale, bool tiles) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16, "bfloat16 q, k, v");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(), "q [N,Hq,D], k/v [T,Hkv,D]");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && q.size(2) == k.size(2), "incompatible heads");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "last dim contiguous");
  TORCH_CHECK(k.strides() == v.strides(), "k and v laid out alike");
  const int64_t docs = own_base.numel();
  TORCH_CHECK(q_cu.numel() == docs + 1, "q_cu [B+1]");
  for (const auto& t : {q_cu, own_base, own_start, prefix_start, prefix_len})
    TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous(), "index tensors: int64");
  TORCH_CHECK(q_cu.data_ptr<int64_t>()[docs] <= q.size(0),
              "q_cu must end at most at the number of rows of q");
  TORCH_CHECK(shared_prefix_attention_brgemm_available(), "no bfloat16 brgemm on this CPU");
  if (q.size(2) == 64) return run<64>(q, k, v, q_cu, own_base, own_start, prefix_start,
                                      prefix_len, scale, tiles);
  TORCH_CHECK(q.size(2) == 128, "head_dim 64 or 128");
  return run<128>(q, k, v, q_cu, own_base, own_start, prefix_start, prefix_len, scale, tiles);
}

#else  // no AVX512-BF16: the vector kernels of shared_prefix_attention.cpp run instead

bool shared_prefix_attention_brgemm_available() { return false; }

at::Tensor shared_prefix_attention_brgemm(at::Tensor q, at::Tensor, at::Tensor, at::Tensor,
                                          at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                          double, bool) {
  TORCH_CHECK(false, "shared_prefix_attention_brgemm: not built on this CPU");
  return q;
}

#endif
