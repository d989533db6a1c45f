// erank_fast's C++ CPU kernels: one declaration per op; the bindings are in bindings.cpp.
// Only ATen's core headers are included, so a first build takes seconds, not minutes.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <string>
#include <vector>

std::vector<at::Tensor> decode_attention(at::Tensor q, at::Tensor k, at::Tensor v,
                                         at::Tensor prefix_start, at::Tensor prefix_len,
                                         at::Tensor own_base, at::Tensor own_len, double scale);

bool shared_prefix_attention_supports(std::string dtype);
at::Tensor shared_prefix_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor q_cu,
                                   at::Tensor own_base, at::Tensor own_start,
                                   at::Tensor prefix_start, at::Tensor prefix_len, double scale);

// the same in bfloat16 through oneDNN's brgemm micro-kernels (AMX tiles where present)
bool shared_prefix_attention_brgemm_available();
at::Tensor shared_prefix_attention_brgemm(at::Tensor q, at::Tensor k, at::Tensor v,
                                          at::Tensor q_cu, at::Tensor own_base,
                                          at::Tensor own_start, at::Tensor prefix_start,
                                          at::Tensor prefix_len, double scale);

void rotary_(at::Tensor q, at::Tensor k, at::Tensor cos, at::Tensor sin);

at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
