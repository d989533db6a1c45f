// The row-wise work around int8 linear layers (CPU; float32 and bfloat16 models): activations
// quantised per row (token) to uint8 with zero point 128 and a float32 scale, and the int8
// GEMMs' outputs (in the model's dtype) scaled back per row, each fused with what comes before
// or after it:
//   rms_norm_quantize  RMSNorm then quantise (the input of the q/k/v and gate/up GEMMs)
//   quantize_rows      quantise (the attention output, before o_proj)
//   silu_mul_quantize  h = silu(s * g) * (s * u), then quantise (the down GEMM's input)
//   scale_rows_        y *= s per row, in place (q, k and v)
//   scaled_add_        residual += y * s per row, in place, one rounding (o_proj, down)
// A row's scale is max|x| / 127 (1 where the row is all zeros); q = round(x / scale) + 128.
// float32 arithmetic throughout; 16 lanes at a time where built with AVX-512 (bfloat16 rows
// with AVX512-BF16, whose instruction rounds them back), 8 float32 lanes with AVX2 and FMA alone
// (quantising, RMSNorm and SiLU x up: on a 2-core Zen 3 the scalar SiLU took 8.8 ms of a
// 2048-row MLP, 11 % of an int8 call), else one value at a time.
#include "erank_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <iterator>
#include <tuple>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "avx512_exp2.h"
#endif
#if defined(__AVX512BF16__)
#include "avx512_bf16.h"
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "exp2_series.h"
#define ERANK_INT8_ROWS_AVX2 1
#endif

namespace {

#if defined(ERANK_INT8_ROWS_AVX2)
float reduce_max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

float reduce_add8(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
}

__m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// silu(y) = y / (1 + 2^(-y log2 e)) on 8 floats: 2^t = 2^f 2^n, n = round(t), 2^f by the
// degree-6 Taylor series (relative error ~1e-7, as the AVX-512 path), 2^n built in the exponent
// bits; t clamped to [-126, 127] (silu is then y, or ~0 against 2^127).
__m256 silu8(__m256 y) {
  const auto& c = erank_cpu::EXP2_TAYLOR6;
  __m256 t = _mm256_mul_ps(y, _mm256_set1_ps(-erank_cpu::LOG2E));
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(c[0]);
  for (std::size_t i = 1; i < std::size(c); ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  return _mm256_div_ps(y, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif

using bf16 = c10::BFloat16;

// Rows of T read and written 16 values at a time as float32 (on = false: no vector path).
template <typename T>
struct Lanes {
  static constexpr bool on = false;
};
#if defined(__AVX512F__)
template <>
struct Lanes<float> {
  static constexpr bool on = true;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
};
#endif
#if defined(__AVX512BF16__)
template <>
struct Lanes<bf16> {
  static constexpr bool on = true;
  static __m512 load(const bf16* p) { return erank_cpu::load16(p); }
  static void store(bf16* p, __m512 x) { erank_cpu::store16(p, x); }
};
#endif

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return static_cast<float>(x); }

// Quantise one float32 row of h values (scale from its max |value|) into q; returns the scale.
float quantize_row(const float* x, uint8_t* q, int64_t h) {
  float top = 0.0f;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 m = _mm512_setzero_ps();
  for (; i + 16 <= h; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  top = _mm512_reduce_max_ps(m);
#endif
#if defined(ERANK_INT8_ROWS_AVX2)
  __m256 m = _mm256_setzero_ps();
  for (; i + 8 <= h; i += 8) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(x + i)));
  top = reduce_max8(m);
#endif
  for (; i < h; ++i) top = std::max(top, std::fabs(x[i]));
  const float scale = top > 0.0f ? top / 127.0f : 1.0f, inv = 1.0f / scale;
  i = 0;
#if defined(__AVX512F__)
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
#if defined(ERANK_INT8_ROWS_AVX2)
  const __m256 vinv = _mm256_set1_ps(inv), offset = _mm256_set1_ps(128.0f);
  for (; i + 8 <= h; i += 8) {
    const __m256i r = _mm256_cvtps_epi32(_mm256_add_ps(
        _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
        offset));  // 1..255: the packs below saturate nothing
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(r),
                                           _mm256_extracti128_si256(r, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(words, words));
  }
#endif
  for (; i < h; ++i) q[i] = static_cast<uint8_t>(std::nearbyint(x[i] * inv) + 128.0f);
  return scale;
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              name, ": float32 or bfloat16 [N, H], last dim contiguous");
}

void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), what, ": of one dtype");
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

// f<T>() for the rows' dtype (float32 or bfloat16; check_rows has checked it).
template <typename F>
auto by_dtype(const at::Tensor& x, F f) {
  return x.scalar_type() == at::kFloat ? f(float{}) : f(bf16{});
}

template <typename T>
void quantize_rows_as(const at::Tensor& x, uint8_t* qp, float* sp) {
  const int64_t h = x.size(1);
  const T* xp = x.data_ptr<T>();
  each_row(x.size(0), h, [&](int64_t r, float* buf) {
    const T* row = xp + r * x.stride(0);
    for (int64_t i = 0; i < h; ++i) buf[i] = to_float(row[i]);
    sp[r] = quantize_row(buf, qp + r * h, h);
  });
}

template <typename T>
void rms_norm_quantize_as(const at::Tensor& x, const at::Tensor& weight, float eps, uint8_t* qp,
                          float* sp) {
  const int64_t h = x.size(1);
  const T *xp = x.data_ptr<T>(), *wp = weight.data_ptr<T>();
  each_row(x.size(0), h, [&](int64_t r, float* buf) {
    const T* row = xp + r * x.stride(0);
    float sum = 0.0f;
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (Lanes<T>::on) {
      __m512 acc = _mm512_setzero_ps();
      for (; i + 16 <= h; i += 16) {
        const __m512 v = Lanes<T>::load(row + i);
        acc = _mm512_fmadd_ps(v, v, acc);
      }
      sum = _mm512_reduce_add_ps(acc);
    }
#elif defined(ERANK_INT8_ROWS_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      __m256 acc = _mm256_setzero_ps();
      for (; i + 8 <= h; i += 8) {
        const __m256 v = _mm256_loadu_ps(row + i);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      sum = reduce_add8(acc);
    }
#endif
    for (; i < h; ++i) sum += to_float(row[i]) * to_float(row[i]);
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
    i = 0;
#if defined(__AVX512F__)
    if constexpr (Lanes<T>::on) {
      const __m512 vinv = _mm512_set1_ps(inv);
      for (; i + 16 <= h; i += 16)
        _mm512_storeu_ps(buf + i, _mm512_mul_ps(_mm512_mul_ps(Lanes<T>::load(row + i), vinv),
                                                Lanes<T>::load(wp + i)));
    }
#elif defined(ERANK_INT8_ROWS_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      const __m256 vinv = _mm256_set1_ps(inv);
      for (; i + 8 <= h; i += 8)
        _mm256_storeu_ps(buf + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), vinv),
                                                _mm256_loadu_ps(wp + i)));
    }
#endif
    for (; i < h; ++i) buf[i] = to_float(row[i]) * inv * to_float(wp[i]);
    sp[r] = quantize_row(buf, qp + r * h, h);
  });
}

template <typename T>
void silu_mul_quantize_as(const at::Tensor& g, const at::Tensor& u, const float* sp, uint8_t* qp,
                          float* op) {
  const int64_t h = g.size(1);
  const T *gp = g.data_ptr<T>(), *up = u.data_ptr<T>();
  each_row(g.size(0), h, [&](int64_t r, float* buf) {
    const T *gr = gp + r * g.stride(0), *ur = up + r * u.stride(0);
    const float sr = sp[r];
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (Lanes<T>::on) {
      const __m512 vs = _mm512_set1_ps(sr);
      for (; i + 16 <= h; i += 16) {
        const __m512 silu = erank_cpu::silu_ps(_mm512_mul_ps(Lanes<T>::load(gr + i), vs));
        _mm512_storeu_ps(buf + i, _mm512_mul_ps(silu, _mm512_mul_ps(Lanes<T>::load(ur + i), vs)));
      }
    }
#elif defined(ERANK_INT8_ROWS_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      const __m256 vs = _mm256_set1_ps(sr);
      for (; i + 8 <= h; i += 8) {
        const __m256 silu = silu8(_mm256_mul_ps(_mm256_loadu_ps(gr + i), vs));
        _mm256_storeu_ps(buf + i, _mm256_mul_ps(silu, _mm256_mul_ps(_mm256_loadu_ps(ur + i), vs)));
      }
    }
#endif
    for (; i < h; ++i) {
      const float a = to_float(gr[i]) * sr;
      buf[i] = a / (1.0f + std::exp(-a)) * (to_float(ur[i]) * sr);
    }
    op[r] = quantize_row(buf, qp + r * h, h);
  });
}

// out[r] = y[r] * s[r] (+ out[r] when add), in place, over rows of T.
template <typename T, bool add>
void scale_rows_as(const at::Tensor& out, const at::Tensor& y, const float* sp) {
  const int64_t h = y.size(1);
  T* op = out.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  at::parallel_for(0, y.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* o = op + r * out.stride(0);
      const T* row = yp + r * y.stride(0);
      int64_t i = 0;
#if defined(__AVX512F__)
      if constexpr (Lanes<T>::on) {
        const __m512 vs = _mm512_set1_ps(sp[r]);
        for (; i + 16 <= h; i += 16) {
          const __m512 v = Lanes<T>::load(row + i);
          Lanes<T>::store(o + i, add ? _mm512_fmadd_ps(v, vs, Lanes<T>::load(o + i))
                                     : _mm512_mul_ps(v, vs));
        }
      }
#endif
      for (; i < h; ++i)
        o[i] = static_cast<T>(add ? to_float(o[i]) + to_float(row[i]) * sp[r]
                                  : to_float(row[i]) * sp[r]);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows(at::Tensor x) {
  check_rows(x, "x");
  auto [q, scale] = quantized_like(x);
  by_dtype(x, [&](auto t) {
    quantize_rows_as<decltype(t)>(x, q.data_ptr<uint8_t>(), scale.data_ptr<float>());
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_quantize(at::Tensor x, at::Tensor weight, double eps) {
  check_rows(x, "x");
  check_same_dtype(x, weight, "x and weight");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous(),
              "weight: [H], contiguous");
  auto [q, scale] = quantized_like(x);
  by_dtype(x, [&](auto t) {
    rms_norm_quantize_as<decltype(t)>(x, weight, static_cast<float>(eps),
                                      q.data_ptr<uint8_t>(), scale.data_ptr<float>());
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> silu_mul_quantize(at::Tensor g, at::Tensor u, at::Tensor s) {
  check_rows(g, "g");
  check_rows(u, "u");
  check_same_dtype(g, u, "g and u");
  TORCH_CHECK(g.sizes() == u.sizes(), "g and u of one shape");
  check_scales(s, g.size(0));
  auto [q, scale] = quantized_like(g);
  by_dtype(g, [&](auto t) {
    silu_mul_quantize_as<decltype(t)>(g, u, s.data_ptr<float>(), q.data_ptr<uint8_t>(),
                                      scale.data_ptr<float>());
  });
  return {q, scale};
}

void scale_rows_(at::Tensor y, at::Tensor s) {
  check_rows(y, "y");
  check_scales(s, y.size(0));
  by_dtype(y, [&](auto t) { scale_rows_as<decltype(t), false>(y, y, s.data_ptr<float>()); });
}

void scaled_add_(at::Tensor residual, at::Tensor y, at::Tensor s) {
  check_rows(residual, "residual");
  check_rows(y, "y");
  check_same_dtype(residual, y, "residual and y");
  TORCH_CHECK(residual.sizes() == y.sizes(), "residual and y of one shape");
  check_scales(s, y.size(0));
  by_dtype(y, [&](auto t) {
    scale_rows_as<decltype(t), true>(residual, y, s.data_ptr<float>());
  });
}
