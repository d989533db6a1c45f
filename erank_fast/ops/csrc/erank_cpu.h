// erank_fast's C++ CPU kernels: one declaration per op; the bindings are in bindings.cpp.
#pragma once

#include <torch/extension.h>

#include <string>
#include <vector>

std::vector<torch::Tensor> decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                            torch::Tensor prefix_start, torch::Tensor prefix_len,
                                            torch::Tensor own_base, torch::Tensor own_len,
                                            double scale);

bool shared_prefix_attention_supports(std::string dtype);
torch::Tensor shared_prefix_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                      torch::Tensor q_cu, torch::Tensor own_base,
                                      torch::Tensor own_start, torch::Tensor prefix_start,
                                      torch::Tensor prefix_len, double scale);

void rotary_(torch::Tensor q, torch::Tensor k, torch::Tensor cos, torch::Tensor sin);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
