// The decode kernels' read-ahead: the next block's own key and value rows of one document (the
// prefix's, read by every document of the query, are in cache), prefetched a few cache lines
// at a time while this block is computed, the keys' lines first. From memory the hardware
// prefetcher alone left the reads and the arithmetic serial (a layer's time = its time in cache
// + its read time), and a block's ~770 prefetches at once stall on the core's miss buffers;
// spread over the block's work, the reads overlap it (100 documents x 220 own keys: 2.4 -> 2.0
// ms a layer on a 2-core Zen 2). Used by run_single of both decode kernels (AVX-512 and
// portable); needs Rows (shared_prefix_attention.cpp) in scope.
#pragma once

#include <algorithm>
#include <cstdint>

namespace {

class NextBlock {
 public:
  static constexpr int MAX_KEYS = 32;  // keys per block, at most

  // Document b's rows, bytes [lo, lo + span) of each (its task's KV heads), in `steps` equal
  // shares of a block's work: each step() call fetches one share of the next block's lines.
  NextBlock(const void* k, const void* v, int64_t row_bytes, int64_t lo, int64_t span,
            int64_t steps, const Rows& m, int64_t b)
      : k_(static_cast<const char*>(k)), v_(static_cast<const char*>(v)),
        row_bytes_(row_bytes), lo_(lo), span_(span), steps_(std::max<int64_t>(1, steps)),
        m_(m), b_(b) {}

  // Keys j0 .. j0 + count - 1 (count <= MAX_KEYS), as ranges of memory: the consecutive rows
  // of a dense arena (lo 0, span a whole row) as one.
  void start(int64_t j0, int64_t count) {
    const bool dense = lo_ == 0 && span_ == row_bytes_;
    ranges_ = 0;
    for (int64_t j = std::max<int64_t>(0, m_.prefix_len[b_] - j0), last = -2; j < count; ++j) {
      const int64_t row = m_.arena_row(b_, j0 + j);
      if (dense && row == last + 1) {
        end_[ranges_ - 1] += span_;
      } else {
        begin_[ranges_] = row * row_bytes_ + lo_;
        end_[ranges_++] = row * row_bytes_ + lo_ + span_;
      }
      last = row;
    }
    range_ = 0;
    at_ = ranges_ > 0 ? begin_[0] : 0;
    int64_t lines = 0;
    for (int r = 0; r < ranges_; ++r) lines += 2 * ((end_[r] - begin_[r] + 63) / 64);
    per_step_ = static_cast<int>((lines + steps_ - 1) / steps_);
  }
  // n shares of the block's work done: fetch n shares of the next block's lines.
  void step(int n = 1) { fetch(n * per_step_); }

 private:
  // The next n cache lines: the key ranges', then the value ranges'.
  void fetch(int n) {
    for (; n > 0 && range_ < 2 * ranges_; --n) {
      const bool keys = range_ < ranges_;
      __builtin_prefetch((keys ? k_ : v_) + at_);
      at_ += 64;
      if (at_ >= end_[keys ? range_ : range_ - ranges_] && ++range_ < 2 * ranges_)
        at_ = begin_[range_ < ranges_ ? range_ : range_ - ranges_];
    }
  }

  const char* const k_;
  const char* const v_;
  const int64_t row_bytes_, lo_, span_, steps_;
  const Rows& m_;
  const int64_t b_;
  int64_t begin_[MAX_KEYS], end_[MAX_KEYS];  // byte offsets of each range in the key arena
  int ranges_ = 0, range_ = 0, per_step_ = 0;
  int64_t at_ = 0;  // the next line's byte offset
};

}  // namespace
