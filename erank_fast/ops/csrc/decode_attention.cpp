// Decode attention on CPU: one new token per document against its query's prefix rows and its
// own rows of the K/V arena, read in place (no gather), GQA-packed (the query heads of one KV
// head share each K/V row load), float32 scores, softmax and accumulation.
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Rows of D values to float: bfloat16 is the upper half of a float32 (a shift, vectorised).
template <int D>
inline void load_row(const float* src, float* dst) {
  for (int i = 0; i < D; ++i) dst[i] = src[i];
}
template <int D>
inline void load_row(const c10::BFloat16* src, float* dst) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
  for (int i = 0; i < D; ++i) out[i] = static_cast<uint32_t>(bits[i]) << 16;
}

template <typename scalar_t, int D>
void decode_attention_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const int64_t* prefix_start, const int64_t* prefix_len,
                             const int64_t* own_base, const int64_t* own_len, float scale,
                             at::Tensor& out, at::Tensor& lse) {
  const int64_t docs = q.size(0), hq = q.size(1), hkv = k.size(1);
  constexpr int64_t d = D;
  const int64_t group = hq / hkv;
  const int64_t q_sb = q.stride(0), q_sh = q.stride(1);
  const int64_t k_st = k.stride(0), k_sh = k.stride(1), v_st = v.stride(0), v_sh = v.stride(1);
  const int64_t o_sb = out.stride(0), o_sh = out.stride(1);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  float* lp = lse.data_ptr<float>();
  at::parallel_for(0, docs * hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * d), acc(group * d), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / hkv, h = task % hkv;
      const int64_t n_prefix = prefix_len[b], n_own = own_len[b], n = n_prefix + n_own;
      // key j: the query's prefix rows first, then the document's own rows
      auto row_of = [&](int64_t j) {
        return j < n_prefix ? prefix_start[b] + j : own_base[b] + (j - n_prefix);
      };
      if (static_cast<int64_t>(scores.size()) < group * n) scores.resize(group * n);
      for (int64_t g = 0; g < group; ++g) {
        load_row<D>(qp + b * q_sb + (h * group + g) * q_sh, qf.data() + g * d);
        for (int64_t i = 0; i < d; ++i) qf[g * d + i] *= scale;
      }
      // Scores: every key row once, all query heads of this KV head against it.
      for (int64_t j = 0; j < n; ++j) {
        const scalar_t* kr = kp + row_of(j) * k_st + h * k_sh;
        alignas(64) float kf[D];
        load_row<D>(kr, kf);
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = qf.data() + g * d;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < d; ++i) s += qg[i] * kf[i];
          scores[g * n + j] = s;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * n;
        float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < n; ++j) m = std::max(m, sg[j]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; ++j) {
          sg[j] = expf(sg[j] - m);
          sum += sg[j];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) sg[j] *= inv;
        lp[b * hq + h * group + g] = m + std::log(sum);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const scalar_t* vr = vp + row_of(j) * v_st + h * v_sh;
        alignas(64) float vf[D];
        load_row<D>(vr, vf);
        for (int64_t g = 0; g < group; ++g) {
          const float w = scores[g * n + j];
          float* ag = acc.data() + g * d;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) ag[i] += w * vf[i];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        scalar_t* dst = op + b * o_sb + (h * group + g) * o_sh;
        for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<scalar_t>(acc[g * d + i]);
      }
    }
  });
}

}  // namespace

// q [B, Hq, D]; k, v [T, Hkv, D] (last dim contiguous); per document: prefix rows
// prefix_start[b] .. + prefix_len[b] and own rows own_base[b] .. + own_len[b] (int64, [B]).
// Returns (out [B, Hq, D] in q's dtype, lse [B, Hq] float32, natural log).
std::vector<at::Tensor> decode_attention(at::Tensor q, at::Tensor k, at::Tensor v,
                                         at::Tensor prefix_start, at::Tensor prefix_len,
                                         at::Tensor own_base, at::Tensor own_len, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes(), "q [B,Hq,D], k/v [T,Hkv,D]");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && q.size(2) == k.size(2), "incompatible heads");
  TORCH_CHECK(q.size(2) == 64 || q.size(2) == 128, "head_dim 64 or 128");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "last dim contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "q, k, v of one dtype");
  for (const auto& t : {prefix_start, prefix_len, own_base, own_len})
    TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous() && t.numel() == q.size(0),
                "index tensors: int64 [B]");
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "float32 or bfloat16");
  auto run = [&](auto tag, auto head_dim) {
    using scalar_t = decltype(tag);
    decode_attention_kernel<scalar_t, decltype(head_dim)::value>(
        q, k, v, prefix_start.data_ptr<int64_t>(), prefix_len.data_ptr<int64_t>(),
        own_base.data_ptr<int64_t>(), own_len.data_ptr<int64_t>(), static_cast<float>(scale),
        out, lse);
  };
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  if (q.size(2) == 64) {
    if (bf16) run(c10::BFloat16{}, std::integral_constant<int, 64>{});
    else run(float{}, std::integral_constant<int, 64>{});
  } else {
    if (bf16) run(c10::BFloat16{}, std::integral_constant<int, 128>{});
    else run(float{}, std::integral_constant<int, 128>{});
  }
  return {out, lse};
}
