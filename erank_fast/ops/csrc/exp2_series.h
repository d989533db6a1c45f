// The polynomials of 2^f, f in [-0.5, 0.5], that the CPU kernels' exp2 evaluates (highest degree
// first, Horner): constants only, shared by the AVX-512 (avx512_exp2.h) and AVX2 (int8_rows.cpp)
// vector paths.
#pragma once

namespace erank_cpu {

constexpr float LOG2E = 1.4426950408889634f;

// The degree-6 Taylor series of 2^f (relative error ~1e-7).
constexpr float EXP2_TAYLOR6[] = {1.5403530393381606e-4f, 1.3333558146428441e-3f,
                                  9.6181291076284772e-3f, 5.5504108664821580e-2f,
                                  2.4022650695910071e-1f, 6.9314718055994531e-1f, 1.0f};
// A degree-4 least-squares fit of 2^f on [-0.5, 0.5] (relative error 3.1e-6).
constexpr float EXP2_FIT4[] = {9.600395517050124e-3f, 5.5916893825048185e-2f,
                               2.4023718463104982e-1f, 6.931219948398218e-1f, 1.0f};

}  // namespace erank_cpu
