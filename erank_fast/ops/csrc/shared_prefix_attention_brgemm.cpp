// Shared-prefix attention for prefill steps in bfloat16 with oneDNN's batch-reduce GEMM
// micro-kernels (ATen's cpublas::brgemm), which run on AMX tiles where the CPU has them: the same
// result as shared_prefix_attention.cpp (every new token of every document against its query's
// prefix rows and causally its own rows of the K/V arena), its two products as matrix tiles.
//
// One task is (document, KV head). Its keys are packed once in the layout the micro-kernels
// read (pairs of bfloat16, "VNNI"), in blocks of KB keys: the prefix's blocks once per (query
// prefix, KV head) for all its documents, the document's own blocks per task. Then per tile of
// MR rows (32 for a document of fewer than 128 rows; a row being (new token i, query head g of
// this KV head's group), token-major):
//   S = Q K^T block by block (float32), the masked softmax over the tile's keys in float32
//   (exp2 in log2 units), P rounded to bfloat16, O = sum over blocks of P V (float32),
//   out = O / l rounded once.
// Keys a row may not see (padding of a block, own keys after its token) get probability 0.
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

using erank_cpu::exp2_ps;
using erank_cpu::LOG2E;
using bf16 = c10::BFloat16;

constexpr int64_t MR = 64;  // rows per tile (at most)
constexpr int64_t KB = 64;  // keys per block

// The first n keys at k, v of one KV head (rows `stride` elements apart), as blocks of KB keys for
// both products: ks[block] = K^T [D/2][KB][2] (S = Q K^T), vs[block] = V [KB/2][D][2] (P V).
// Keys past n are zeros.
template <int D>
void pack_keys(const bf16* k, const bf16* v, int64_t stride, int64_t n, bf16* ks, bf16* vs) {
  const int64_t blocks = (n + KB - 1) / KB;
  std::memset(ks, 0, sizeof(bf16) * blocks * KB * D);
  std::memset(vs, 0, sizeof(bf16) * blocks * KB * D);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t blk = j / KB, jj = j % KB;
    const auto* krow = reinterpret_cast<const uint32_t*>(k + j * stride);
    auto* kb = reinterpret_cast<uint32_t*>(ks + blk * KB * D);
    for (int p = 0; p < D / 2; ++p) kb[p * KB + jj] = krow[p];
    const bf16* vrow = v + j * stride;
    bf16* vb = vs + blk * KB * D + (jj / 2) * 2 * D + (jj % 2);
    for (int d = 0; d < D; ++d) vb[2 * d] = vrow[d];
  }
}

struct Doc {
  int64_t q_row, new_tokens, own_base, own_start, prefix;  // prefix: index into Prefixes
};

struct Prefixes {  // the distinct query prefixes of a call, packed once per KV head
  std::vector<int64_t> start, len, offset;  // offset: of the prefix's packed keys, head 0
  int64_t head_stride = 0;                   // elements between heads' packed keys
  std::vector<bf16> ks, vs;
  int64_t blocks(int64_t p) const { return (len[p] + KB - 1) / KB; }
};

template <int D>
void run_task(const Doc& doc, int64_t h, int64_t group, const bf16* q, int64_t q_s0,
              int64_t q_s1, const bf16* k, const bf16* v, int64_t k_s0, int64_t k_s1, bf16* out,
              int64_t o_s0, int64_t o_s1, const Prefixes& pre, float scale_log2,
              std::vector<bf16>& own_k, std::vector<bf16>& own_v, std::vector<float>& s_buf,
              std::vector<bf16>& p_buf, std::vector<bf16>& q_buf, std::vector<float>& o_buf) {
  const int64_t own_keys = doc.own_start + doc.new_tokens;
  const int64_t own_blocks = (own_keys + KB - 1) / KB;
  const int64_t plen = pre.len[doc.prefix], pblocks = pre.blocks(doc.prefix);
  const int64_t max_blocks = pblocks + own_blocks, width = max_blocks * KB;
  own_k.resize(own_blocks * KB * D);
  own_v.resize(own_blocks * KB * D);
  pack_keys<D>(k + doc.own_base * k_s0 + h * k_s1, v + doc.own_base * k_s0 + h * k_s1, k_s0,
               own_keys, own_k.data(), own_v.data());
  const bf16* pk = pre.ks.data() + pre.offset[doc.prefix] + h * pre.head_stride;
  const bf16* pv = pre.vs.data() + pre.offset[doc.prefix] + h * pre.head_stride;
  auto k_block = [&](int64_t b) {
    return b < pblocks ? pk + b * KB * D : own_k.data() + (b - pblocks) * KB * D;
  };
  auto v_block = [&](int64_t b) {
    return b < pblocks ? pv + b * KB * D : own_v.data() + (b - pblocks) * KB * D;
  };
  // Tiles of 64 rows: on a 2-core Xeon with AMX, 1.07-1.13x the speed of 32-row tiles at
  // prefill sizes (8-21 documents x 186-250 tokens); a document of fewer than 128 rows keeps
  // 32-row tiles, which pad it less.
  const int64_t rows = doc.new_tokens * group, mr = rows >= 128 ? MR : 32;
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
    // Own keys the tile's last token sees: its blocks, and no block past them.
    const int64_t last_token = (r0 + tile - 1) / group;
    const int64_t blocks = pblocks + (doc.own_start + last_token + KB) / KB;
    for (int64_t b = 0; b < blocks; ++b)
      at::native::cpublas::brgemm(mr, KB, D, D, KB, width, false, q_buf.data(), k_block(b),
                                  s_buf.data() + b * KB, true);
    float inv_l[MR];
    for (int64_t r = 0; r < mr; ++r) {
      float* s = s_buf.data() + r * width;
      bf16* p = p_buf.data() + r * width;
      if (r >= tile) {  // padding rows: weights 0
        std::memset(p, 0, sizeof(bf16) * blocks * KB);
        inv_l[r] = 0.0f;
        continue;
      }
      // Visible: prefix keys [0, plen) and own keys [0, own_seen): two runs of S's row (the
      // own keys start at block pblocks); every other weight up to the tile's blocks is 0.
      const int64_t own0 = pblocks * KB, own_seen = doc.own_start + (r0 + r) / group + 1;
      const int64_t runs[2][2] = {{0, plen}, {own0, own0 + own_seen}};
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
        const __m512 e =
            _mm512_maskz_mov_ps(keep, exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, m)));
        sum = _mm512_add_ps(sum, e);
        erank_cpu::store16(p + j, e);
      };
      const int64_t zero_from[2] = {each_16(runs[0], weights), each_16(runs[1], weights)};
      std::memset(p + zero_from[0], 0, sizeof(bf16) * (own0 - zero_from[0]));
      std::memset(p + zero_from[1], 0, sizeof(bf16) * (blocks * KB - zero_from[1]));
      inv_l[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    for (int64_t b = 0; b < blocks; ++b)
      at::native::cpublas::brgemm(mr, D, KB, width, D, D, b > 0, p_buf.data() + b * KB,
                                  v_block(b), o_buf.data(), true);
    for (int64_t r = 0; r < tile; ++r) {
      const int64_t t = (r0 + r) / group, g = (r0 + r) % group;
      bf16* dst = out + (doc.q_row + t) * o_s0 + (h * group + g) * o_s1;
      const __m512 w = _mm512_set1_ps(inv_l[r]);
      for (int d = 0; d < D; d += 16)
        erank_cpu::store16(dst + d, _mm512_mul_ps(_mm512_loadu_ps(o_buf.data() + r * D + d), w));
    }
  }
}

template <int D>
at::Tensor run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& q_cu, const at::Tensor& own_base, const at::Tensor& own_start,
               const at::Tensor& prefix_start, const at::Tensor& prefix_len, double scale) {
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
  int64_t blocks_total = 0;
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
      pre.offset.push_back(blocks_total * KB * D);
      blocks_total += pre.blocks(it->second);
    }
    doc[b] = {cu[b], cu[b + 1] - cu[b], ob[b], os[b], it->second};
  }
  pre.head_stride = blocks_total * KB * D;
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
                   pre.ks.data() + at_, pre.vs.data() + at_);
    }
  });
  // Tasks longest first, handed out one at a time (the cores finish together).
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (cost, document * kv_heads + head)
  for (const int64_t b : tiled)
    for (int64_t h = 0; h < kv_heads; ++h)
      tasks.push_back({doc[b].new_tokens * (pre.len[doc[b].prefix] + doc[b].own_start +
                                            doc[b].new_tokens), b * kv_heads + h});
  std::sort(tasks.begin(), tasks.end(), std::greater<>());
  const float scale_log2 = static_cast<float>(scale) * LOG2E;
  bf16* op = out.data_ptr<bf16>();
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<bf16> own_k, own_v, p_buf, q_buf;
    std::vector<float> s_buf, o_buf;
    for (int64_t i; (i = next.fetch_add(1)) < static_cast<int64_t>(tasks.size());) {
      const int64_t task = tasks[i].second;
      run_task<D>(doc[task / kv_heads], task % kv_heads, group, qp, q.stride(0), q.stride(1),
                  kp, vp, k.stride(0), k.stride(1), op, out.stride(0), out.stride(1), pre,
                  scale_log2, own_k, own_v, s_buf, p_buf, q_buf, o_buf);
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
                                          at::Tensor prefix_len, double scale) {
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
                                      prefix_len, scale);
  TORCH_CHECK(q.size(2) == 128, "head_dim 64 or 128");
  return run<128>(q, k, v, q_cu, own_base, own_start, prefix_start, prefix_len, scale);
}

#else  // no AVX512-BF16: the vector kernels of shared_prefix_attention.cpp run instead

bool shared_prefix_attention_brgemm_available() { return false; }

at::Tensor shared_prefix_attention_brgemm(at::Tensor q, at::Tensor, at::Tensor, at::Tensor,
                                          at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                          double) {
  TORCH_CHECK(false, "shared_prefix_attention_brgemm: not built on this CPU");
  return q;
}

#endif
