// VeLO's tensor-level network for the fused path (velo_tensor_level.cpp); bound in per_param_mlp.cpp.
#pragma once

#include <torch/extension.h>

#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

using Meta = std::unordered_map<std::string, torch::Tensor>;
using MlpLayers = std::vector<std::tuple<torch::Tensor, torch::Tensor>>;  // [(W, b), ...]
// (loss_ema, loss_min, loss_max, h per tensor, c per tensor, MLP layers stacked over tensors, scales)
using TensorLevel = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, std::vector<torch::Tensor>,
                               std::vector<torch::Tensor>, MlpLayers, std::vector<double>>;

TensorLevel velo_tensor_level(const Meta& meta, const torch::Tensor& t, const torch::Tensor& horizon,
                              const torch::Tensor& loss, const torch::Tensor& loss_ema, const torch::Tensor& loss_min,
                              const torch::Tensor& loss_max, const std::vector<double>& loss_decays,
                              const std::vector<double>& fraction_taus, const std::vector<double>& time_scales,
                              const std::vector<torch::Tensor>& summaries, int64_t stats_at,
                              const std::vector<int64_t>& ranks, const std::vector<torch::Tensor>& h_prev,
                              const std::vector<torch::Tensor>& c_prev, int64_t n_feat, int64_t n_layers,
                              int64_t hidden, double step_mult);
