// The row-wise work around int8 linear layers (CPU, bfloat16 models): activations quantised
// per row (token) to uint8 with zero point 128 and a float32 scale, and the int8 GEMMs' bfloat16
// outputs scaled back per row, each fused with what comes before or after it:
//   rms_norm_quantize  RMSNorm then quantise (the input of the q/k/v and gate/up GEMMs)
//   quantize_rows      quantise (the attention output, before o_proj)
//   silu_mul_quantize  h = silu(s * g) * (s * u), then quantise (the down GEMM's input)
//   scale_rows_        y *= s per row, in place (q, k and v)
//   scaled_add_        residual += y * s per row, in place, one rounding (o_proj, down)
// A row's scale is max|x| / 127 (1 where the row is all zeros); q = round(x / scale) + 128.
// float32 arithmetic throughout, AVX-512 where built with it.
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#if defined(__AVX512BF16__)
#include <immintrin.h>

#include "avx512_bf16.h"
#include "avx512_exp2.h"
#endif

namespace {

using bf16 = c10::BFloat16;

#if defined(__AVX512BF16__)
using erank_cpu::load16;
using erank_cpu::store16;
#endif

// buf[i] = f(i, x[i] as float) over a bfloat16 row; f takes and returns a vector of 16 floats
// where built with AVX-512 (and a float in the tail loop).
template <typename V, typename S>
void map_row(const bf16* x, float* buf, int64_t h, V vf, S sf) {
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 16 <= h; i += 16) _mm512_storeu_ps(buf + i, vf(i, load16(x + i)));
#endif
  for (; i < h; ++i) buf[i] = sf(i, static_cast<float>(x[i]));
}

// Quantise one float32 row of h values (scale from its max |value|) into q; returns the scale.
float quantize_row(const float* x, uint8_t* q, int64_t h) {
  float top = 0.0f;
  int64_t i = 0;
#if defined(__AVX512BF16__)
  __m512 m = _mm512_setzero_ps();
  for (; i + 16 <= h; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  top = _mm512_reduce_max_ps(m);
#endif
  for (; i < h; ++i) top = std::max(top, std::fabs(x[i]));
  const float scale = top > 0.0f ? top / 127.0f : 1.0f, inv = 1.0f / scale;
  i = 0;
#if defined(__AVX512BF16__)
  const __m512 vinv = _mm512_set1_ps(inv), offset = _mm512_set1_ps(128.0f);
  for (; i + 16 <= h; i += 16) {
    const __m512 r = _mm512_add_ps(
        _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vinv),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
        offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                     _mm512_cvtusepi32_epi8(_mm512_cvtps_epu32(r)));
  }
#endif
  for (; i < h; ++i) q[i] = static_cast<uint8_t>(std::nearbyint(x[i] * inv) + 128.0f);
  return scale;
}

inline float to_float(bf16 x) { return static_cast<float>(x); }

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16, name,
              ": bfloat16 [N, H], last dim contiguous");
}

void check_scales(const at::Tensor& s, int64_t n) {
  TORCH_CHECK(s.dim() == 1 && s.size(0) == n && s.is_contiguous() &&
                  s.scalar_type() == at::kFloat, "s: float32 [N], one scale per row");
}

// The outputs of a quantising kernel for rows like x: uint8 [N, H] and float32 scales [N].
std::tuple<at::Tensor, at::Tensor> quantized_like(const at::Tensor& x) {
  return {at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kByte)),
          at::empty({x.size(0)}, x.options().dtype(at::kFloat))};
}

// Row-parallel loop handing each worker a float32 buffer of h values.
template <typename F>
void each_row(int64_t n, int64_t h, F f) {
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(h);
    for (int64_t r = begin; r < end; ++r) f(r, buf.data());
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows(at::Tensor x) {
  check_rows(x, "x");
  const int64_t n = x.size(0), h = x.size(1);
  auto [q, scale] = quantized_like(x);
  const bf16* xp = x.data_ptr<bf16>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = scale.data_ptr<float>();
  each_row(n, h, [&](int64_t r, float* buf) {
    map_row(xp + r * x.stride(0), buf, h, [](int64_t, auto v) { return v; },
            [](int64_t, float v) { return v; });
    sp[r] = quantize_row(buf, qp + r * h, h);
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_quantize(at::Tensor x, at::Tensor weight, double eps) {
  check_rows(x, "x");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
                  weight.scalar_type() == at::kBFloat16, "weight: bfloat16 [H], contiguous");
  const int64_t n = x.size(0), h = x.size(1);
  auto [q, scale] = quantized_like(x);
  const bf16 *xp = x.data_ptr<bf16>(), *wp = weight.data_ptr<bf16>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = scale.data_ptr<float>();
  each_row(n, h, [&](int64_t r, float* buf) {
    const bf16* row = xp + r * x.stride(0);
    float sum = 0.0f;
    int64_t i = 0;
#if defined(__AVX512BF16__)
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= h; i += 16) {
      const __m512 v = load16(row + i);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    sum = _mm512_reduce_add_ps(acc);
#endif
    for (; i < h; ++i) sum += to_float(row[i]) * to_float(row[i]);
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + static_cast<float>(eps));
#if defined(__AVX512BF16__)
    const __m512 vinv = _mm512_set1_ps(inv);
    map_row(row, buf, h, [&](int64_t j, __m512 v) {
      return _mm512_mul_ps(_mm512_mul_ps(v, vinv), load16(wp + j));
    }, [&](int64_t j, float v) { return v * inv * to_float(wp[j]); });
#else
    for (int64_t j = 0; j < h; ++j) buf[j] = to_float(row[j]) * inv * to_float(wp[j]);
#endif
    sp[r] = quantize_row(buf, qp + r * h, h);
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> silu_mul_quantize(at::Tensor g, at::Tensor u, at::Tensor s) {
  check_rows(g, "g");
  check_rows(u, "u");
  TORCH_CHECK(g.sizes() == u.sizes(), "g and u of one shape");
  check_scales(s, g.size(0));
  const int64_t n = g.size(0), h = g.size(1);
  auto [q, scale] = quantized_like(g);
  const bf16 *gp = g.data_ptr<bf16>(), *up = u.data_ptr<bf16>();
  const float* sp = s.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* op = scale.data_ptr<float>();
  each_row(n, h, [&](int64_t r, float* buf) {
    const bf16 *gr = gp + r * g.stride(0), *ur = up + r * u.stride(0);
    const float sr = sp[r];
#if defined(__AVX512BF16__)
    const __m512 vs = _mm512_set1_ps(sr);
    map_row(gr, buf, h, [&](int64_t i, __m512 v) {
      const __m512 silu = erank_cpu::silu_ps(_mm512_mul_ps(v, vs));
      return _mm512_mul_ps(silu, _mm512_mul_ps(load16(ur + i), vs));
    }, [&](int64_t i, float v) {
      const float a = v * sr;
      return a / (1.0f + std::exp(-a)) * (to_float(ur[i]) * sr);
    });
#else
    for (int64_t i = 0; i < h; ++i) {
      const float a = to_float(gr[i]) * sr;
      buf[i] = a / (1.0f + std::exp(-a)) * (to_float(ur[i]) * sr);
    }
#endif
    op[r] = quantize_row(buf, qp + r * h, h);
  });
  return {q, scale};
}

void scale_rows_(at::Tensor y, at::Tensor s) {
  check_rows(y, "y");
  check_scales(s, y.size(0));
  const int64_t h = y.size(1);
  bf16* yp = y.data_ptr<bf16>();
  const float* sp = s.data_ptr<float>();
  at::parallel_for(0, y.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bf16* row = yp + r * y.stride(0);
      int64_t i = 0;
#if defined(__AVX512BF16__)
      const __m512 vs = _mm512_set1_ps(sp[r]);
      for (; i + 16 <= h; i += 16) store16(row + i, _mm512_mul_ps(load16(row + i), vs));
#endif
      for (; i < h; ++i) row[i] = static_cast<bf16>(to_float(row[i]) * sp[r]);
    }
  });
}

void scaled_add_(at::Tensor residual, at::Tensor y, at::Tensor s) {
  check_rows(residual, "residual");
  check_rows(y, "y");
  TORCH_CHECK(residual.sizes() == y.sizes(), "residual and y of one shape");
  check_scales(s, y.size(0));
  const int64_t h = y.size(1);
  bf16* rp = residual.data_ptr<bf16>();
  const bf16* yp = y.data_ptr<bf16>();
  const float* sp = s.data_ptr<float>();
  at::parallel_for(0, y.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bf16* out = rp + r * residual.stride(0);
      const bf16* row = yp + r * y.stride(0);
      int64_t i = 0;
#if defined(__AVX512BF16__)
      const __m512 vs = _mm512_set1_ps(sp[r]);
      for (; i + 16 <= h; i += 16)
        store16(out + i, _mm512_fmadd_ps(load16(row + i), vs, load16(out + i)));
#endif
      for (; i < h; ++i)
        out[i] = static_cast<bf16>(to_float(out[i]) + to_float(row[i]) * sp[r]);
    }
  });
}
