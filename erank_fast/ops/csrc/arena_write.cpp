// A step's new K and V rows written into the K/V arena (CPU): row i of k and v goes to arena row
// rows[i], each a plain copy of its bytes, the rows shared out between the threads. Advanced
// indexing (arena[rows] = k) runs the same copy through TensorIterator's index_put at ~4 GB/s
// on a 2-core Xeon (a 4000-row step of SmolLM2's 3 x 64 K: 0.40 ms per layer and tensor).
// float32 rows into a bfloat16 arena (int8 attention's) are rounded to nearest even, as
// PyTorch's cast.
#include "erank_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include "avx512_bf16.h"
#endif

namespace {

// n float32 values rounded to bfloat16
void round_row(c10::BFloat16* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) erank_cpu::store16(dst + i, _mm512_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
}

void check(const at::Tensor& arena, const at::Tensor& x, const at::Tensor& rows) {
  TORCH_CHECK(arena.device().is_cpu() && x.device().is_cpu() && rows.device().is_cpu(),
              "arena_write_: CPU tensors");
  TORCH_CHECK(arena.scalar_type() == x.scalar_type() ||
                  (arena.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kFloat),
              "arena_write_: arena and rows of one dtype, or float32 rows into bfloat16");
  TORCH_CHECK(arena.dim() >= 2 && x.dim() == arena.dim() && x.size(0) == rows.numel(),
              "arena_write_: x [N, ...] for N rows of the arena [T, ...]");
  for (int64_t d = 1; d < arena.dim(); ++d)
    TORCH_CHECK(x.size(d) == arena.size(d), "arena_write_: a row of x is not an arena row");
  TORCH_CHECK(arena[0].is_contiguous() && arena.stride(0) == arena[0].numel(),
              "arena_write_: arena rows contiguous");
  TORCH_CHECK(x.numel() == 0 || x[0].is_contiguous(), "arena_write_: each row of x contiguous");
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.is_contiguous(), "arena_write_: int64 rows");
}

}  // namespace

void arena_write_(at::Tensor k_arena, at::Tensor v_arena, at::Tensor rows, at::Tensor k,
                  at::Tensor v) {
  check(k_arena, k, rows);
  check(v_arena, v, rows);
  TORCH_CHECK(k_arena.sizes() == v_arena.sizes(), "arena_write_: K and V arenas alike");
  const int64_t n = rows.numel(), arena_rows = k_arena.size(0);
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(r[i] >= 0 && r[i] < arena_rows, "arena_write_: row ", r[i], " outside the arena of ",
                arena_rows, " rows");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "arena_write_: k and v of one dtype");
  if (k.scalar_type() != k_arena.scalar_type()) {  // float32 rows into a bfloat16 arena
    const int64_t width = k_arena.stride(0);
    auto* ka = k_arena.data_ptr<c10::BFloat16>();
    auto* va = v_arena.data_ptr<c10::BFloat16>();
    const float* kp = k.data_ptr<float>();
    const float* vp = v.data_ptr<float>();
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        round_row(ka + r[i] * width, kp + i * k.stride(0), width);
        round_row(va + r[i] * width, vp + i * v.stride(0), width);
      }
    });
    return;
  }
  const int64_t bytes = k_arena.stride(0) * k_arena.element_size();
  auto* ka = static_cast<char*>(k_arena.data_ptr());
  auto* va = static_cast<char*>(v_arena.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const int64_t ks = k.stride(0) * k.element_size(), vs = v.stride(0) * v.element_size();
  at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      std::memcpy(ka + r[i] * bytes, kp + i * ks, bytes);
      std::memcpy(va + r[i] * bytes, vp + i * vs, bytes);
    }
  });
}
