// Linear layers of many rows (prefill steps) in bfloat16 on AMX tiles, on small_linear's weight
// blocks, with the epilogue done while the tiles multiply.
//
// A linear layer with an epilogue (bias; SiLU; a product with, or a sum into, another tensor)
// multiplies on the tile unit and finishes on the vector units. Done one after the other, as
// oneDNN's inner product with post-ops and the brgemm micro-kernels followed by a pass both do,
// the epilogue adds its own time: ~3 of ~13 ms for SmolLM2's MLP at 4096 rows on a 2-core Xeon
// with AMX, where the same GEMMs without epilogues take ~10. Here each 32 x 32 output tile is
// multiplied in four float32 accumulator tiles (two 16-row tiles of the input, two 16-column
// tiles of a weight block, K 32 at a time), and the previous tile's epilogue runs a few rows per
// step of the next tile's K loop, so the vector units work while the tile unit multiplies. The
// threads take runs of 32-row chunks and go through the weight blocks a group at a time (the
// group in L2 while the chunks pass; with fewer chunks than twice the threads, runs of blocks
// instead). The MLP's gate and up projections of a tile are multiplied together and finished
// in one pass (silu(gate) rounded to bfloat16, times up), which is what small_linear's SiLU and
// product epilogues compute one after the other.
//
// The products are those of the brgemm micro-kernels on the same blocks, summed in the same
// order: the results equal small_linear's (tested).
#include "erank_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "linear_epilogue.h"

namespace {

using bf16 = c10::BFloat16;
using erank_cpu::Epilogue;
using erank_cpu::store16;

constexpr int64_t NB = erank_cpu::SMALL_LINEAR_BLOCK;  // output columns per weight block
constexpr int64_t ROWS = 32, COLS = 32, KSTEP = 32;    // one output tile; K per tile step
// From this many rows a step takes the tiles (measured against the brgemm micro-kernels on the
// same blocks: 1.2x at 512 rows, parity at 256; at 32-224 rows parity and at 1-16 0.83x, where
// streaming the weights is the cost).
constexpr int64_t MIN_ROWS = 256;
// Up to this K (measured 1.10x oneDNN with epilogues at Qwen3-0.6B's 1024 -> 3072 -> 1024):
// at Qwen3-4B's 2560 -> 9728 -> 2560 oneDNN's inner product was as fast (206 against 201 ms per
// MLP at 2048 rows), the tiles' 32-row input chunk no longer fitting in L1 beside the weights.
constexpr int64_t MAX_K = 3072;
// The weight blocks a thread keeps in its L2 while its chunks pass.
constexpr int64_t GROUP_BYTES = 768 << 10;
constexpr int SILU_MUL = 4;  // the gate/up pair's epilogue

// One 32 x 32 tile's epilogue source: its float32 products (and the up projection's, for the
// gate/up pair), where its rows go, and its bias.
struct Finish {
  const float* c = nullptr;
  const float* c_up = nullptr;
  const float* bias = nullptr;
  const float* bias_up = nullptr;
  bf16* out = nullptr;
  int64_t ldo = 0, rows = 0, cols = 0;
};

template <int EPI>
inline void finish_row(const Finish& f, int64_t r) {
  for (int64_t j = 0; j < f.cols; j += 16) {
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, f.cols - j)) - 1);
    bf16* o = f.out + r * f.ldo + j;
    const __m512 y = _mm512_load_ps(f.c + r * COLS + j);
    const float* bias = f.bias != nullptr ? f.bias + j : nullptr;
    if constexpr (EPI == SILU_MUL) {  // silu(gate) rounded as small_linear's SiLU output is, x up
      const __m512 g = erank_cpu::silu_ps(
          bias != nullptr ? _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, bias)) : y);
      __m512 u = _mm512_load_ps(f.c_up + r * COLS + j);
      if (f.bias_up != nullptr) u = _mm512_add_ps(u, _mm512_maskz_loadu_ps(mask, f.bias_up + j));
      store16(o, _mm512_mul_ps(_mm512_cvtpbh_ps(_mm512_cvtneps_pbh(g)), u), mask);
    } else {
      erank_cpu::finish16(y, bias, static_cast<Epilogue>(EPI), o, mask);
    }
  }
}

// The next chunk's input rows, asked into L2 a few cache lines per K step while the current
// chunk multiplies, so that its first tiles find them there rather than in L3 or memory (on a
// 2-core Xeon with AMX, 4 lines a step: think-off calls 1.04x, 6 rounds; 8 lines no better).
struct NextRows {
  static constexpr int LINES_PER_STEP = 4;
  const char* row;  // the row being fetched
  int64_t stride, bytes, at = 0, rows;

  NextRows(const bf16* a, int64_t lda, int64_t k, int64_t n_rows)
      : row(reinterpret_cast<const char*>(a)), stride(lda * 2), bytes(k * 2), rows(n_rows) {}

  void step() {
    for (int i = 0; i < LINES_PER_STEP && rows > 0; ++i) {
      _mm_prefetch(row + at, _MM_HINT_T1);
      if ((at += 64) >= bytes) {
        at = 0;
        row += stride;
        --rows;
      }
    }
  }
};

// c [32][32] = a [32 rows, K] x one 32-column half of a weight block, finishing `pending`'s rows
// between the K steps (all of them by the end) and fetching `next`'s.
template <int EPI>
inline void multiply_tile(const bf16* a, int64_t lda, const bf16* b, int64_t k, float* c,
                          const Finish& pending, NextRows& next) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t steps = k / KSTEP;
  const int64_t per_step = (pending.rows + steps - 1) / steps;
  int64_t done = 0;
  for (int64_t kk = 0; kk < k; kk += KSTEP) {
    _tile_loadd(4, a + kk, lda * 2);
    _tile_loadd(5, a + 16 * lda + kk, lda * 2);
    _tile_loadd(6, b + kk * NB, NB * 4);  // rows of K pairs: [K/2][NB][2]
    _tile_loadd(7, b + kk * NB + 32, NB * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    for (const int64_t end = std::min(pending.rows, done + per_step); done < end; ++done)
      finish_row<EPI>(pending, done);
    next.step();
  }
  for (; done < pending.rows; ++done) finish_row<EPI>(pending, done);
  _tile_stored(0, c, COLS * 4);
  _tile_stored(1, c + 16, COLS * 4);
  _tile_stored(2, c + 16 * COLS, COLS * 4);
  _tile_stored(3, c + 16 * COLS + 16, COLS * 4);
}

// out[:, :n] through EPI from x @ blocks (and up_blocks for the gate/up pair).
template <int EPI>
void run(const at::Tensor& x, const bf16* w, const bf16* w_up, int64_t n, const float* bias,
         const float* bias_up, bf16* out, int64_t ldo) {
  const int64_t m = x.size(0), k = x.size(1), lda = x.stride(0);
  const bf16* a = x.data_ptr<bf16>();
  const int64_t count = (n + NB - 1) / NB, chunks = (m + ROWS - 1) / ROWS;
  const int64_t group = std::clamp<int64_t>(
      GROUP_BYTES / (k * NB * 2 * (w_up != nullptr ? 2 : 1)), 1, count);
  // The threads share out the chunks (each reads every weight block once per chunk run); where
  // there are too few chunks to go round (many cores), the blocks instead.
  const bool by_rows = chunks >= 2 * at::get_num_threads();
  at::parallel_for(0, by_rows ? chunks : count, 1, [&](int64_t i0, int64_t i1) {
    const int64_t c0 = by_rows ? i0 : 0, c1 = by_rows ? i1 : chunks;
    const int64_t b0 = by_rows ? 0 : i0, b1 = by_rows ? count : i1;
    erank_cpu::load_tile_config();
    alignas(64) float c[2][ROWS * COLS], c_up[2][ROWS * COLS];
    std::vector<bf16> padded;  // a last chunk of fewer than 32 rows, padded with zero rows
    Finish pending, none;
    int buffer = 0;
    for (int64_t g0 = b0; g0 < b1; g0 += group) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        const int64_t r0 = chunk * ROWS, rows = std::min(ROWS, m - r0);
        const bf16* rows_a = a + r0 * lda;
        int64_t ld = lda;
        if (rows < ROWS) {
          padded.assign(ROWS * k, bf16(0.0f));
          for (int64_t r = 0; r < rows; ++r)
            std::memcpy(padded.data() + r * k, rows_a + r * lda, k * sizeof(bf16));
          rows_a = padded.data();
          ld = k;
        }
        // The rows after this chunk's: the next chunk's, or at a group's end the first chunk's
        // (the next group starts from it).
        const int64_t following = chunk + 1 < c1 ? chunk + 1 : c0;
        const int64_t following_rows =
            chunk + 1 < c1 || g0 + group < b1 ? std::min(ROWS, m - following * ROWS) : 0;
        NextRows next(a + following * ROWS * lda, lda, k, following_rows);
        for (int64_t blk = g0; blk < std::min(b1, g0 + group); ++blk) {
          for (int64_t half = 0; half < NB / COLS; ++half) {
            const int64_t col = blk * NB + half * COLS;
            if (col >= n) break;
            const int64_t offset = blk * k * NB + half * COLS * 2;
            multiply_tile<EPI>(rows_a, ld, w + offset, k, c[buffer], pending, next);
            if (w_up != nullptr)
              multiply_tile<EPI>(rows_a, ld, w_up + offset, k, c_up[buffer], none, next);
            pending = Finish{c[buffer], c_up[buffer],
                             bias != nullptr ? bias + col : nullptr,
                             bias_up != nullptr ? bias_up + col : nullptr,
                             out + r0 * ldo + col, ldo, rows, std::min(COLS, n - col)};
            buffer ^= 1;
          }
        }
      }
    }
    for (int64_t r = 0; r < pending.rows; ++r) finish_row<EPI>(pending, r);
    // Releases the tiles and tells ATen's brgemm its own tile configuration is gone.
    at::native::cpublas::brgemm_release(true);
  });
}

struct TileConfig {  // palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace

namespace erank_cpu {

bool tiles_permitted() {
  static const bool permitted = [] {  // Linux asks each process to request the tile state
    constexpr int ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return permitted;
}

void load_tile_config() {
  // A static object: GCC 12 drops a stack copy's stores past its first 32 bytes as dead before
  // ldtilecfg, where the function is not inlined.
  static const TileConfig config = [] {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.rows[t] = 16;
      c.bytes_per_row[t] = 64;
    }
    return c;
  }();
  _tile_loadconfig(&config);
}

}  // namespace erank_cpu

bool tile_linear_applies(int64_t m, int64_t k) {
  return m >= MIN_ROWS && k > 0 && k % KSTEP == 0 && k <= MAX_K && small_linear_available() &&
         erank_cpu::tiles_permitted();
}

void tile_linear(const at::Tensor& x, const at::Tensor& blocks, int64_t n, const float* bias,
                 Epilogue epilogue, c10::BFloat16* out, int64_t ldo) {
  const bf16* w = blocks.data_ptr<bf16>();
  switch (epilogue) {
    case erank_cpu::NONE: return run<erank_cpu::NONE>(x, w, nullptr, n, bias, nullptr, out, ldo);
    case erank_cpu::SILU: return run<erank_cpu::SILU>(x, w, nullptr, n, bias, nullptr, out, ldo);
    case erank_cpu::MUL: return run<erank_cpu::MUL>(x, w, nullptr, n, bias, nullptr, out, ldo);
    case erank_cpu::ADD: return run<erank_cpu::ADD>(x, w, nullptr, n, bias, nullptr, out, ldo);
  }
}

void tile_linear_gate_up(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                         int64_t n, const float* gate_bias, const float* up_bias,
                         c10::BFloat16* out) {
  run<SILU_MUL>(x, gate.data_ptr<bf16>(), up.data_ptr<bf16>(), n, gate_bias, up_bias, out, n);
}

#else  // no AMX: the brgemm micro-kernels (or oneDNN) take every step

namespace erank_cpu {
bool tiles_permitted() { return false; }
void load_tile_config() { TORCH_CHECK(false, "no AMX tiles in this build"); }
}  // namespace erank_cpu

bool tile_linear_applies(int64_t, int64_t) { return false; }

void tile_linear(const at::Tensor&, const at::Tensor&, int64_t, const float*, erank_cpu::Epilogue,
                 c10::BFloat16*, int64_t) {
  TORCH_CHECK(false, "tile_linear: not built on this CPU");
}

void tile_linear_gate_up(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                         const float*, const float*, c10::BFloat16*) {
  TORCH_CHECK(false, "tile_linear: not built on this CPU");
}

#endif
