// VeLO's tensor-level network for the fused path: what velo.py's `_loss_features`, `_tensor_rows`
// and `_tensor_level` compute (loss features, per-tensor LSTM step, hypernetwork), in plain loops.
//
// Why: it is a few thousand multiply-adds per parameter tensor, but as ~70 small torch ops it cost
// 1-2 ms a step, more than a tenth of a whole step at 1e6 parameters (the caches are cold after the
// kernel's passes over the parameters). The functional step stays the reference; tests compare.
//
// Row layout (velo.py's `_tensor_rows`): training-fraction features (taus), loss features
// (loss_decays), 0.1·log of mean|g|, mean|m_k| (K), mean sqrt(rms) relative to RMS(p) and of RMS(p),
// a one-hot of min(rank, 4).

#include "velo_tensor_level.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

using Meta = std::unordered_map<std::string, torch::Tensor>;
using MlpLayers = std::vector<std::tuple<torch::Tensor, torch::Tensor>>;  // [(W, b), ...]
// (loss_ema, loss_min, loss_max, h per tensor, c per tensor, MLP layers stacked over tensors, scales)
using TensorLevel = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, std::vector<torch::Tensor>,
                               std::vector<torch::Tensor>, MlpLayers, std::vector<double>>;

constexpr float LOG_FLOOR = 1e-12f;  // velo.py's _LOG_FLOOR
constexpr int64_t RANKS = 5;         // the rank one-hot: 0, 1, 2, 3, ≥ 4

const torch::Tensor& entry(const Meta& meta, const std::string& name) {
  const auto found = meta.find(name);
  TORCH_CHECK(found != meta.end(), "velo fused: meta-parameter ", name, " is missing");
  return found->second;
}

// A float32 CPU tensor's data, checked against the shape the network expects.
const float* weights_of(const Meta& meta, const std::string& name, std::vector<int64_t> shape) {
  const torch::Tensor& t = entry(meta, name);
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.device().is_cpu() && t.is_contiguous(),
              "velo fused: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.sizes().vec() == shape, "velo fused: ", name, " has shape ", t.sizes(), ", expected ",
              torch::IntArrayRef(shape));
  return t.data_ptr<float>();
}

float scalar(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat32 && t.device().is_cpu() ? *t.data_ptr<float>() : t.item<float>();
}

// out = b + x·w for a row vector x (n_in) and w (n_in, n_out); no b: out = x·w.
void affine(const float* x, int64_t n_in, const float* w, const float* b, int64_t n_out, float* out) {
  for (int64_t j = 0; j < n_out; ++j) out[j] = b ? b[j] : 0.0f;
  for (int64_t i = 0; i < n_in; ++i)
    for (int64_t j = 0; j < n_out; ++j) out[j] += x[i] * w[i * n_out + j];
}

// NaN propagates as through torch.relu and torch.max (the functional step): a NaN gradient gives NaN
// updates on both paths, not finite ones on this one.
float relu(float x) { return x < 0.0f ? 0.0f : x; }
float max_keep_nan(float a, float b) { return std::isnan(b) || b > a ? b : a; }
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One step of VeLO's tensor-level network for T parameter tensors. `t`: steps taken including this
// one; `summaries`: each tensor's plan_tensor summary, whose statistics start at `stats_at`.
// Returns (loss_ema, loss_min, loss_max, h (T rows), c, layers, scales): layers are the per-parameter
// MLPs as (W (T, in, out), b (T, out)) pairs stacked over tensors, the first over the n_feat
// per-parameter features with the time features folded into its bias; scales[i] = step_mult·RMS(p_i)·α_i.
TensorLevel velo_tensor_level(const Meta& meta, const torch::Tensor& t, const torch::Tensor& horizon,
                              const torch::Tensor& loss, const torch::Tensor& loss_ema, const torch::Tensor& loss_min,
                              const torch::Tensor& loss_max, const std::vector<double>& loss_decays,
                              const std::vector<double>& fraction_taus, const std::vector<double>& time_scales,
                              const std::vector<torch::Tensor>& summaries, int64_t stats_at,
                              const std::vector<int64_t>& ranks, const std::vector<torch::Tensor>& h_prev,
                              const std::vector<torch::Tensor>& c_prev, int64_t n_feat, int64_t n_layers,
                              int64_t hidden, double step_mult) {
  const int64_t T = static_cast<int64_t>(summaries.size()), L = static_cast<int64_t>(loss_decays.size());
  const int64_t n_frac = static_cast<int64_t>(fraction_taus.size()), n_time = static_cast<int64_t>(time_scales.size());
  const int64_t E = entry(meta, "tensor.in.b").numel(), H = entry(meta, "lstm.w_h").size(0);
  const int64_t K = entry(meta, "head.controls.b").numel();
  const int64_t n_in = entry(meta, "tensor.in.w").size(0), n_stats = n_in - n_frac - L - RANKS;
  TORCH_CHECK(T >= 1 && static_cast<int64_t>(ranks.size()) == T && static_cast<int64_t>(h_prev.size()) == T &&
                  static_cast<int64_t>(c_prev.size()) == T,
              "velo fused: one summary, rank and LSTM state per tensor");
  TORCH_CHECK(n_stats >= 3, "velo fused: the tensor-input width does not match the decays");
  const float* w_in = weights_of(meta, "tensor.in.w", {n_in, E});
  const float* b_in = weights_of(meta, "tensor.in.b", {E});
  const float* w_mix = weights_of(meta, "tensor.mix.w", {E, E});
  const float* b_mix = weights_of(meta, "tensor.mix.b", {E});
  const float* w_x = weights_of(meta, "lstm.w_x", {E, 4 * H});
  const float* w_h = weights_of(meta, "lstm.w_h", {H, 4 * H});
  const float* b_lstm = weights_of(meta, "lstm.b", {4 * H});
  const float* w_controls = weights_of(meta, "head.controls.w", {H, K});
  const float* b_controls = weights_of(meta, "head.controls.b", {K});
  const float* w_alpha = weights_of(meta, "head.alpha.w", {H, 1});
  const float* b_alpha = weights_of(meta, "head.alpha.b", {1});

  // Loss features (velo.py's _loss_features): a non-finite loss reuses the largest loss seen.
  const float step = scalar(t), loss_hi_prev = scalar(loss_max);
  float value = scalar(loss);
  if (!std::isfinite(value)) value = loss_hi_prev;
  const bool first = step == 1.0f;
  const float lo = first ? value : std::min(scalar(loss_min), value);
  const float hi = first ? value : std::max(loss_hi_prev, value);
  auto new_ema = torch::empty({L}, torch::kFloat32);
  const auto old_ema = loss_ema.to(torch::kFloat32).contiguous();
  std::vector<float> shared(n_frac + L);  // the features every tensor's row starts with
  for (int64_t k = 0; k < n_frac; ++k)
    shared[k] = std::tanh(10.0f * (step / scalar(horizon) - static_cast<float>(fraction_taus[k])));
  for (int64_t k = 0; k < L; ++k) {
    const float beta = static_cast<float>(loss_decays[k]);
    const float ema = beta * old_ema.data_ptr<float>()[k] + (1.0f - beta) * value;
    new_ema.data_ptr<float>()[k] = ema;
    const float corrected = ema / (1.0f - std::pow(beta, step));
    shared[n_frac + k] = std::clamp(2.0f * (corrected - lo) / std::max(hi - lo, LOG_FLOOR) - 1.0f, -1.0f, 1.0f);
  }

  // Rows → embedding z (T, E), then the cross-tensor max of the mixing layer.
  std::vector<float> row(n_in), z(T * E), mixed(E, -INFINITY), tmp(std::max(E, K)), rms_p(T);
  for (int64_t i = 0; i < T; ++i) {
    const float* s = summaries[i].data_ptr<float>();
    TORCH_CHECK(summaries[i].numel() >= stats_at + n_stats - 1, "velo fused: summary too short");
    std::copy(shared.begin(), shared.end(), row.begin());
    rms_p[i] = std::sqrt(s[1] + 1e-9f);  // s[1]: the mean square of p (feature "p")
    float* stats = row.data() + n_frac + L;
    for (int64_t k = 0; k + 1 < n_stats; ++k) stats[k] = 0.1f * std::log(s[stats_at + k] / rms_p[i] + LOG_FLOOR);
    stats[n_stats - 1] = 0.1f * std::log(rms_p[i]);
    for (int64_t r = 0; r < RANKS; ++r) stats[n_stats + r] = std::min<int64_t>(ranks[i], RANKS - 1) == r ? 1.0f : 0.0f;
    affine(row.data(), n_in, w_in, b_in, E, z.data() + i * E);
    for (int64_t j = 0; j < E; ++j) z[i * E + j] = relu(z[i * E + j]);
    affine(z.data() + i * E, E, w_mix, b_mix, E, tmp.data());
    for (int64_t j = 0; j < E; ++j) mixed[j] = max_keep_nan(mixed[j], relu(tmp[j]));
  }

  // Each basis MLP's first-layer bias with the time features folded in: they are the same for every
  // coordinate (and every tensor), so the mixture of these is each tensor's first bias.
  const int64_t n_rows0 = n_feat + n_time;
  const float* bank_w0 = weights_of(meta, "bank.w0", {K, n_rows0, hidden});
  const float* bank_b0 = weights_of(meta, "bank.b0", {K, hidden});
  std::vector<float> time_bias(K * hidden), time_feats(n_time);
  for (int64_t r = 0; r < n_time; ++r) time_feats[r] = std::tanh(step / static_cast<float>(time_scales[r]) - 1.0f);
  for (int64_t k = 0; k < K; ++k)
    affine(time_feats.data(), n_time, bank_w0 + (k * n_rows0 + n_feat) * hidden, bank_b0 + k * hidden, hidden,
           time_bias.data() + k * hidden);

  // The bank, layer by layer: (K, fan_in, fan_out) weights of which the mixture uses the first
  // `used` of each member's (layer 0: the per-parameter rows), and (K, fan_out) biases.
  struct BankLayer {
    const float *w, *b;
    int64_t fan_in, fan_out, used;
  };
  std::vector<BankLayer> bank;
  for (int64_t l = 0; l < n_layers; ++l) {
    const int64_t fan_in = l == 0 ? n_rows0 : hidden, fan_out = l + 1 < n_layers ? hidden : 2;
    const std::string at = std::to_string(l);
    bank.push_back({weights_of(meta, "bank.w" + at, {K, fan_in, fan_out}),
                    l == 0 ? time_bias.data() : weights_of(meta, "bank.b" + at, {K, fan_out}), fan_in, fan_out,
                    (l == 0 ? n_feat : fan_in) * fan_out});
  }

  // Outputs stacked over tensors: apply_tensor reads tensor i's slice, so no per-tensor objects.
  auto h = torch::empty({T, H}, torch::kFloat32), c = torch::empty({T, H}, torch::kFloat32);
  MlpLayers layers;
  for (const auto& layer : bank)
    layers.emplace_back(torch::zeros({T, layer.used / layer.fan_out, layer.fan_out}, torch::kFloat32),
                        torch::zeros({T, layer.fan_out}, torch::kFloat32));
  std::vector<double> scales(T);

  // One LSTM step per tensor (gate order i, f, g, o, as base.lstm_cell), the heads, the hypernetwork.
  std::vector<float> x(E), gates(4 * H), from_h(4 * H), mix(K), alpha(1);
  for (int64_t i = 0; i < T; ++i) {
    const auto h0 = h_prev[i].to(torch::kFloat32).contiguous(), c0 = c_prev[i].to(torch::kFloat32).contiguous();
    TORCH_CHECK(h0.numel() == H && c0.numel() == H, "velo fused: LSTM state of the wrong size");
    for (int64_t j = 0; j < E; ++j) x[j] = z[i * E + j] + mixed[j];
    affine(x.data(), E, w_x, b_lstm, 4 * H, gates.data());
    affine(h0.data_ptr<float>(), H, w_h, nullptr, 4 * H, from_h.data());
    float *hp = h.data_ptr<float>() + i * H, *cp = c.data_ptr<float>() + i * H;
    for (int64_t j = 0; j < H; ++j) {
      const auto gate = [&](int64_t q) { return gates[q * H + j] + from_h[q * H + j]; };
      cp[j] = sigmoid(gate(1)) * c0.data_ptr<float>()[j] + sigmoid(gate(0)) * std::tanh(gate(2));
      hp[j] = sigmoid(gate(3)) * std::tanh(cp[j]);
    }

    affine(hp, H, w_controls, b_controls, K, mix.data());
    for (auto& m : mix) m = 100.0f * m / static_cast<float>(K);  // W = 100·mean_k(c_k·W_k)
    affine(hp, H, w_alpha, b_alpha, 1, alpha.data());
    scales[i] = step_mult * double(rms_p[i]) * double(std::exp(alpha[0]));

    for (int64_t l = 0; l < n_layers; ++l) {
      const BankLayer& layer = bank[l];
      float* wp = std::get<0>(layers[l]).data_ptr<float>() + i * layer.used;
      float* bp = std::get<1>(layers[l]).data_ptr<float>() + i * layer.fan_out;
      for (int64_t k = 0; k < K; ++k) {
        const float* member = layer.w + k * layer.fan_in * layer.fan_out;
        for (int64_t e = 0; e < layer.used; ++e) wp[e] += mix[k] * member[e];
        for (int64_t j = 0; j < layer.fan_out; ++j) bp[j] += mix[k] * layer.b[k * layer.fan_out + j];
      }
    }
  }
  const auto out_scalar = [&](float v) { return torch::full({}, v, torch::kFloat32); };
  return {new_ema, out_scalar(lo), out_scalar(hi), h.unbind(0), c.unbind(0), layers, scales};
}

}  // namespace

void bind_velo_tensor_level(pybind11::module& module) {
  module.def("velo_tensor_level", &velo_tensor_level, "VeLO's loss features, per-tensor LSTM step and hypernetwork");
}
