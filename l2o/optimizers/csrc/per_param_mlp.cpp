// Fused CPU kernels for the per-parameter MLP learned optimizers (`mlp`, `velo`) at inference.
//
// The functional step (l2o/optimizers/features.py + mlp.py) is the reference; these kernels compute
// the same numbers in two passes over a parameter tensor instead of dozens of tensor ops:
//
//   feature_sums: new accumulators and features of every coordinate, reduced to per-tensor sums
//                 (mean squares for the RMS normalization, VeLO's |g|, |m|, sqrt(rms) statistics);
//                 nothing is written.
//   apply_update: the same features again, the MLP on them, the update; writes p and the
//                 accumulators in place.
//
// Coordinates are processed in tiles of TILE along the tensor's last dimension: the features of a
// tile live in small stack arrays (L1), and every inner loop runs over the tile, so the compiler
// vectorizes it. Adafactor's row/column factors are broadcast tensors; each tile reads them through
// a per-outer-row base offset and a step of 0 or 1 along the last dimension (`row_base`, `row_step`),
// which covers matrices, vectors and conv weights whose factored dimensions are not the last two.
//
// Feature order of a coordinate (the "full" features of FeatureSet.names(): the row/column ones
// enter through the tables instead): g, p, m_k (K), rms, m_k*rsqrt(rms) (K), rsqrt(rms),
// g*rsqrt(rms), adafactor_g_a (A), fac_m, [clip(g, ±0.1)].

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t TILE = 64;
constexpr int64_t PREFETCH = 8 * TILE;  // coordinates ahead
constexpr int MAX_K = 4;
constexpr int MAX_A = 4;
constexpr int MAX_H = 64;
constexpr int MAX_FULL = 2 * MAX_K + MAX_A + 7;
constexpr int64_t CHUNK = 16384;  // coordinates per parallel work item (fixed: results don't depend on threads)

struct Inputs {
  float* p;
  const float* g;
  float* m;  // (K, n)
  float* rms;
  float* fac_m;
  const float* rowtab;  // (row_width, rows): A factors, then the first layer's per-row part
  const float* coltab;  // (col_width, cols)
  const int64_t* row_base;
  const int64_t* col_base;
  int64_t outer, inner, n, row_step, col_step, row_width, col_width, rows, cols;
  int K, A, n_full;
  bool small_clip;
  float clip, mom[MAX_K], mom_c[MAX_K], rms_decay, fm_decay;
};

Inputs make_inputs(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor rms, torch::Tensor fac_m,
                   torch::Tensor rowtab, torch::Tensor coltab, torch::Tensor row_base, torch::Tensor col_base,
                   int64_t row_step, int64_t col_step, std::vector<double> decays, int64_t n_ada, double clip,
                   bool small_clip) {
  // decays: K momentum decays, rms decay, factored-momentum decay (Adafactor's are in the tables).
  const int64_t n = p.numel();
  const int64_t outer = row_base.numel();
  TORCH_CHECK(outer > 0 && n % outer == 0, "fused: row_base does not match the tensor");
  for (auto* t : {&p, &g, &m, &rms, &fac_m, &rowtab, &coltab})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == torch::kFloat32 && t->device().is_cpu(),
                "fused: tensors must be contiguous float32 on CPU");
  Inputs in;
  in.p = p.data_ptr<float>();
  in.g = g.data_ptr<float>();
  in.m = m.data_ptr<float>();
  in.rms = rms.data_ptr<float>();
  in.fac_m = fac_m.data_ptr<float>();
  in.rowtab = rowtab.data_ptr<float>();
  in.coltab = coltab.data_ptr<float>();
  in.row_base = row_base.data_ptr<int64_t>();
  in.col_base = col_base.data_ptr<int64_t>();
  in.outer = outer;
  in.inner = n / outer;
  in.n = n;
  in.row_step = row_step;
  in.col_step = col_step;
  TORCH_CHECK(rowtab.dim() == 2 && coltab.dim() == 2, "fused: tables must be 2-D");
  in.row_width = rowtab.size(0);
  in.col_width = coltab.size(0);
  in.rows = rowtab.size(1);
  in.cols = coltab.size(1);
  in.K = static_cast<int>(decays.size()) - 2;
  TORCH_CHECK(in.K >= 1 && in.K <= MAX_K && m.numel() == in.K * n, "fused: bad momentum decays / m");
  in.A = static_cast<int>(n_ada);
  TORCH_CHECK(in.A >= 1 && in.A <= MAX_A, "fused: bad number of Adafactor decays");
  in.n_full = 2 * in.K + in.A + 6 + (small_clip ? 1 : 0);
  in.small_clip = small_clip;
  in.clip = static_cast<float>(clip);
  for (int k = 0; k < in.K; ++k) {
    in.mom[k] = static_cast<float>(decays[k]);
    in.mom_c[k] = static_cast<float>(1.0 - decays[k]);
  }
  in.rms_decay = static_cast<float>(decays[in.K]);
  in.fm_decay = static_cast<float>(decays[in.K + 1]);
  return in;
}

// Column `col` of a (width, count) table for the tile's coordinates: a constant (step 0) or a run.
inline void gather(const float* tab, int64_t count, int col, int64_t base, int64_t step, int64_t len, float* out) {
  const float* src = tab + col * count + base;
  if (step == 0) {
    std::fill(out, out + len, *src);
  } else {
    std::copy(src, src + len, out);
  }
}

// Features of coordinates [e0, e0+len) (one tile inside outer row o), and the new accumulators.
struct Tile {
  float f[MAX_FULL][TILE];  // full features; the new accumulators are among them (pointers below)
  const float* mn[MAX_K];
  const float* rn;
  const float* fmn;
  int64_t len;
};

// out = 1/sqrt(x + eps) (x ≥ 0). With AVX: the hardware estimate refined by one Newton step
// (relative error ~1e-7, a few float ulps) instead of sqrt + divide, which cost ~4× more.
inline void inverse_sqrt(const float* __restrict x, float eps, float* __restrict out, int64_t len) {
  int64_t i = 0;
#if defined(__AVX__)
  const __m256 e = _mm256_set1_ps(eps), half = _mm256_set1_ps(0.5f), three_halves = _mm256_set1_ps(1.5f);
  for (; i + 8 <= len; i += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), e);
    const __m256 y = _mm256_rsqrt_ps(v);
    const __m256 vyy = _mm256_mul_ps(_mm256_mul_ps(v, y), y);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(y, _mm256_sub_ps(three_halves, _mm256_mul_ps(half, vyy))));
  }
#endif
  for (; i < len; ++i) out[i] = 1.0f / std::sqrt(x[i] + eps);
}

// Clamp that keeps NaN (std::min/max would drop it, hiding a bad gradient from the caller).
inline float clamp_keep_nan(float x, float bound) { return x > bound ? bound : (x < -bound ? -bound : x); }

// Every loop below reads and writes through local __restrict pointers and local constants, so the
// compiler knows stores into the tile cannot change its inputs and vectorizes each loop.
inline void tile_features(const Inputs& in, int64_t o, int64_t i0, Tile& t) {
  const int64_t e0 = o * in.inner + i0;
  const int64_t len = t.len;
  const int K = in.K, A = in.A;
  const int64_t rb0 = in.row_base[o] + i0 * in.row_step, cb0 = in.col_base[o] + i0 * in.col_step;
  float* __restrict gc = t.f[0];
  float* __restrict pp = t.f[1];
  // Software prefetch of the streams a few tiles ahead: the hardware prefetcher alone does not keep
  // K+4 interleaved streams in flight, and these passes are bound by memory, not arithmetic.
  if (e0 + PREFETCH + TILE <= in.n) {
    for (int64_t line = 0; line < TILE; line += 16) {
      const int64_t at = e0 + PREFETCH + line;
      __builtin_prefetch(in.g + at);
      __builtin_prefetch(in.p + at);
      __builtin_prefetch(in.rms + at);
      __builtin_prefetch(in.fac_m + at);
      for (int k = 0; k < K; ++k) __builtin_prefetch(in.m + k * in.n + at);
    }
  }
  {
    const float* __restrict g = in.g + e0;
    const float* __restrict p = in.p + e0;
    const float clip = in.clip;
    for (int64_t i = 0; i < len; ++i) {
      gc[i] = clamp_keep_nan(g[i], clip);
      pp[i] = p[i];
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* __restrict mk = in.m + k * in.n + e0;
    const float b = in.mom[k], c = in.mom_c[k];
    float* __restrict out = t.f[2 + k];
    for (int64_t i = 0; i < len; ++i) out[i] = b * mk[i] + c * gc[i];
    t.mn[k] = out;
  }
  float* __restrict rn = t.f[2 + K];
  float* __restrict inv = t.f[3 + 2 * K];
  float* __restrict ginv = t.f[4 + 2 * K];
  {
    const float* __restrict rms = in.rms + e0;
    const float rb = in.rms_decay, rc = 1.0f - in.rms_decay;
    for (int64_t i = 0; i < len; ++i) rn[i] = rb * rms[i] + rc * (gc[i] * gc[i]);
    inverse_sqrt(rn, 1e-8f, inv, len);
    for (int64_t i = 0; i < len; ++i) ginv[i] = gc[i] * inv[i];
  }
  t.rn = rn;
  for (int k = 0; k < K; ++k) {
    float* __restrict out = t.f[3 + K + k];
    const float* __restrict mk = t.mn[k];
    for (int64_t i = 0; i < len; ++i) out[i] = mk[i] * inv[i];
  }
  float rf[TILE], cf[TILE];
  for (int a = 0; a < A; ++a) {
    gather(in.rowtab, in.rows, a, rb0, in.row_step, len, rf);
    gather(in.coltab, in.cols, a, cb0, in.col_step, len, cf);
    float* __restrict out = t.f[5 + 2 * K + a];
    for (int64_t i = 0; i < len; ++i) out[i] = gc[i] * rf[i] * cf[i];
  }
  float* __restrict fm = t.f[5 + 2 * K + A];
  {
    const float* __restrict last_ada = t.f[4 + 2 * K + A];
    const float* __restrict fac_m = in.fac_m + e0;
    const float fb = in.fm_decay, fc = 1.0f - in.fm_decay;
    for (int64_t i = 0; i < len; ++i) fm[i] = fb * fac_m[i] + fc * last_ada[i];
  }
  t.fmn = fm;
  if (in.small_clip) {
    float* __restrict sc = t.f[6 + 2 * K + A];
    for (int64_t i = 0; i < len; ++i) sc[i] = clamp_keep_nan(gc[i], 0.1f);
  }
}

template <typename Fn>
void for_each_tile(const Inputs& in, int64_t row_begin, int64_t row_end, Fn&& fn) {
  Tile t{};  // zeroed: lanes past a short tile's length are read (never stored) by `dense`
  for (int64_t o = row_begin; o < row_end; ++o) {
    for (int64_t i0 = 0; i0 < in.inner; i0 += TILE) {
      t.len = std::min(TILE, in.inner - i0);
      tile_features(in, o, i0, t);
      fn(o, i0, t);
    }
  }
}

// Σ fn(x_i) over a tile; `omp simd reduction` lets the compiler reorder (and so vectorize) the sum.
template <typename Fn>
inline float sum_of(const float* x, int64_t len, Fn fn) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; ++i) s += fn(x[i]);
  return s;
}

using Vec = at::vec::Vectorized<float>;


// GCC/Clang vector of 8 floats (one AVX2 register, two SSE ones), and its unaligned-load twin: plain
// arrays of these stay in registers where at::vec::Vectorized arrays get spilled.
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
inline v8 load8(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void store8(float* p, v8 x) { *reinterpret_cast<v8u*>(p) = x; }

// NB outputs of a dense layer for VB vectors of 8 coordinates. NB and VB are constants, so the NB·VB
// accumulators stay in registers while the inputs stream past, and NB·VB independent FMA chains hide
// the FMA latency. Tile arrays are read and written in whole vectors (lanes past the tile's length
// hold stale, finite values that are never stored to a tensor).
template <int NB, int VB>
inline void dense_block(const float* const* x, int fan_in, const float* W, int fan_out, int j0, const float* b,
                        float out[][TILE], int64_t i, bool relu_inputs, bool accumulate) {
  v8 acc[VB][NB];
#pragma GCC unroll 8
  for (int u = 0; u < VB; ++u)
#pragma GCC unroll 8
    for (int jj = 0; jj < NB; ++jj) acc[u][jj] = accumulate ? load8(out[j0 + jj] + i + 8 * u) : v8{} + (b ? b[j0 + jj] : 0.0f);
  for (int f = 0; f < fan_in; ++f) {
    v8 v[VB];
#pragma GCC unroll 8
    for (int u = 0; u < VB; ++u) {
      v[u] = load8(x[f] + i + 8 * u);
      if (relu_inputs) v[u] = v[u] < 0.0f ? v8{} : v[u];  // NaN stays NaN, as torch.relu
    }
    const float* w = W + f * fan_out + j0;
#pragma GCC unroll 8
    for (int jj = 0; jj < NB; ++jj) {
      const float wj = w[jj];
#pragma GCC unroll 8
      for (int u = 0; u < VB; ++u) acc[u][jj] += wj * v[u];
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < VB; ++u)
#pragma GCC unroll 8
    for (int jj = 0; jj < NB; ++jj) store8(out[j0 + jj] + i + 8 * u, acc[u][jj]);
}

template <int NB>
inline void dense_outputs(const float* const* x, int fan_in, const float* W, int fan_out, int j0, const float* b,
                          float out[][TILE], int64_t len, bool relu_inputs, bool accumulate) {
  constexpr int VB = NB <= 2 ? 4 : (NB <= 4 ? 2 : 1);
  constexpr int64_t STEP = VB * 8;
  static_assert(TILE % STEP == 0, "TILE must be a multiple of the vector block");
  for (int64_t i = 0; i < len; i += STEP) dense_block<NB, VB>(x, fan_in, W, fan_out, j0, b, out, i, relu_inputs, accumulate);
}

// out[j] (+)= Σ_f x_f·W[f, j] (+ b[j]) over a tile, ReLU on the inputs if asked; outputs in blocks of 8.
void dense(const float* const* x, int fan_in, const float* W, const float* b, int fan_out, float out[][TILE],
           int64_t len, bool relu_inputs, bool accumulate) {
  for (int j0 = 0; j0 < fan_out; j0 += 8) {
    switch (std::min(8, fan_out - j0)) {
#define L2O_BLOCK(NB) \
  case NB:            \
    dense_outputs<NB>(x, fan_in, W, fan_out, j0, b, out, len, relu_inputs, accumulate); \
    break;
      L2O_BLOCK(1) L2O_BLOCK(2) L2O_BLOCK(3) L2O_BLOCK(4) L2O_BLOCK(5) L2O_BLOCK(6) L2O_BLOCK(7) L2O_BLOCK(8)
#undef L2O_BLOCK
    }
  }
}

int64_t rows_per_chunk(const Inputs& in) { return std::max<int64_t>(1, CHUNK / in.inner); }

}  // namespace

// Per-chunk sums (chunks, n_full + K + 2), in double: Σf² of each full feature, then (if `stats`;
// zeros otherwise) Σ|g|, Σ|m_k|, Σsqrt(rms), VeLO's tensor statistics. The caller sums the chunks in
// a fixed order, so results do not depend on the number of threads.
torch::Tensor feature_sums(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor rms, torch::Tensor fac_m,
                           torch::Tensor rowtab, torch::Tensor coltab, torch::Tensor row_base,
                           torch::Tensor col_base, int64_t row_step, int64_t col_step, std::vector<double> decays,
                           int64_t n_ada, double clip, bool small_clip, bool stats) {
  Inputs in = make_inputs(p, g, m, rms, fac_m, rowtab, coltab, row_base, col_base, row_step, col_step, decays, n_ada,
                          clip, small_clip);
  const int64_t per = rows_per_chunk(in);
  const int64_t chunks = (in.outer + per - 1) / per;
  const int width = in.n_full + in.K + 2;
  auto out = torch::zeros({chunks, width}, torch::kFloat64);
  double* acc = out.data_ptr<double>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* row = acc + c * width;
      for_each_tile(in, c * per, std::min(in.outer, (c + 1) * per), [&](int64_t, int64_t, const Tile& t) {
        for (int j = 0; j < in.n_full; ++j) row[j] += sum_of(t.f[j], t.len, [](float x) { return x * x; });
        if (!stats) return;
        auto absolute = [](float x) { return std::fabs(x); };
        row[in.n_full] += sum_of(t.f[0], t.len, absolute);
        for (int k = 0; k < in.K; ++k) row[in.n_full + 1 + k] += sum_of(t.mn[k], t.len, absolute);
        row[in.n_full + 1 + in.K] += sum_of(t.rn, t.len, [](float x) { return std::sqrt(x); });
      });
    }
  });
  return out;
}

// One step, in place. `weights`/`biases`: the MLP after its first layer's row/column/bias part
// (w0: (n_full, H) with the RMS normalization folded in; the tables' columns after the A factors
// hold each row's/column's first-layer contribution, bias included), then hidden layers and the
// (H, 2) output layer. update = scale·d + adam_lr·m̂₀/(sqrt(v̂)+eps); p ← p - exp(exp_mult·μ)·update.
void apply_update(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor rms, torch::Tensor fac_m,
                  torch::Tensor rowtab, torch::Tensor coltab, torch::Tensor row_base, torch::Tensor col_base,
                  int64_t row_step, int64_t col_step, std::vector<double> decays, int64_t n_ada, double clip,
                  bool small_clip, std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases,
                  double scale, double exp_mult, double adam_lr, double bias_c1, double bias_c2, double eps) {
  Inputs in = make_inputs(p, g, m, rms, fac_m, rowtab, coltab, row_base, col_base, row_step, col_step, decays, n_ada,
                          clip, small_clip);
  const int n_layers = static_cast<int>(weights.size());
  TORCH_CHECK(n_layers >= 2 && static_cast<int>(biases.size()) == n_layers - 1, "fused: bad MLP layers");
  std::vector<const float*> W, B;
  std::vector<int> fan_in, fan_out;
  for (int l = 0; l < n_layers; ++l) {
    TORCH_CHECK(weights[l].is_contiguous() && weights[l].dim() == 2 && weights[l].scalar_type() == torch::kFloat32,
                "fused: MLP weights must be contiguous 2-D float32");
    W.push_back(weights[l].data_ptr<float>());
    fan_in.push_back(weights[l].size(0));
    fan_out.push_back(weights[l].size(1));
    TORCH_CHECK(fan_out[l] <= MAX_H, "fused: MLP too wide");
    if (l > 0) B.push_back(biases[l - 1].contiguous().data_ptr<float>());
  }
  TORCH_CHECK(fan_in[0] == in.n_full && fan_out.back() == 2, "fused: MLP shape does not match the features");
  TORCH_CHECK(in.row_width == in.A + fan_out[0] && in.col_width == in.A + fan_out[0], "fused: bad tables");
  const float fscale = static_cast<float>(scale), fexp = static_cast<float>(exp_mult);
  const float flr = static_cast<float>(adam_lr), fc1 = static_cast<float>(bias_c1);
  const float fc2 = static_cast<float>(bias_c2), feps = static_cast<float>(eps);
  const int64_t per = rows_per_chunk(in);
  const int64_t chunks = (in.outer + per - 1) / per;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    float h[MAX_H][TILE] = {}, h2[MAX_H][TILE] = {};
    for (int64_t c = c0; c < c1; ++c) {
      for_each_tile(in, c * per, std::min(in.outer, (c + 1) * per), [&](int64_t o, int64_t i0, Tile& t) {
        const int64_t len = t.len;
        const int H0 = fan_out[0];
        const int64_t rb0 = in.row_base[o] + i0 * in.row_step, cb0 = in.col_base[o] + i0 * in.col_step;
        for (int j = 0; j < H0; ++j) {
          gather(in.rowtab, in.rows, in.A + j, rb0, in.row_step, len, h[j]);
          gather(in.coltab, in.cols, in.A + j, cb0, in.col_step, len, h2[j]);
          for (int64_t i = 0; i < len; ++i) h[j][i] += h2[j][i];
        }
        const float* feats[MAX_FULL];
        for (int f = 0; f < in.n_full; ++f) feats[f] = t.f[f];
        dense(feats, in.n_full, W[0], nullptr, H0, h, len, false, true);
        float(*cur)[TILE] = h;
        float(*nxt)[TILE] = h2;
        for (int l = 1; l < n_layers; ++l) {
          const float* prev[MAX_H];
          for (int j = 0; j < fan_in[l]; ++j) prev[j] = cur[j];
          dense(prev, fan_in[l], W[l], B[l - 1], fan_out[l], nxt, len, true, false);
          std::swap(cur, nxt);
        }
        // cur[0] = d, cur[1] = μ; nxt is free scratch now.
        {
          float* __restrict mult = nxt[0];
          float* __restrict upd = nxt[1];
          const float* __restrict d = cur[0];
          const float* __restrict mu = cur[1];
          const float* __restrict m0 = t.mn[0];
          const float* __restrict rn = t.rn;
          const float sc = fscale, ex = fexp, lr = flr, c1 = fc1, c2 = fc2, ep = feps;
          for (int64_t i = 0; i < len; ++i) mult[i] = ex * mu[i];
          for (int64_t i = 0; i < len; i += Vec::size()) {
            const int64_t cnt = std::min<int64_t>(Vec::size(), len - i);
            Vec::loadu(mult + i, cnt).exp().store(mult + i, cnt);
          }
          for (int64_t i = 0; i < len; ++i) upd[i] = sc * d[i];
          if (lr != 0.0f)
            for (int64_t i = 0; i < len; ++i) upd[i] += lr * (m0[i] / c1) / (std::sqrt(rn[i] / c2) + ep);
          const int64_t e0 = o * in.inner + i0;
          float* __restrict p = in.p + e0;
          float* __restrict rms = in.rms + e0;
          float* __restrict fac_m = in.fac_m + e0;
          const float* __restrict p_old = t.f[1];
          const float* __restrict fmn = t.fmn;
          float* __restrict pn = nxt[2];
          for (int64_t i = 0; i < len; ++i) pn[i] = p_old[i] - mult[i] * upd[i];
          std::copy(pn, pn + len, p);
          std::copy(rn, rn + len, rms);
          std::copy(fmn, fmn + len, fac_m);
        }
        for (int k = 0; k < in.K; ++k) std::copy(t.mn[k], t.mn[k] + len, in.m + k * in.n + o * in.inner + i0);
      });
    }
  });
}

// Adafactor's first pass: Σ over the factored-out dimension of clip(g)² + eps, for the row and the
// column accumulators ((rows,) and (cols,) in their flattened layouts). Serial: it only reads g.
std::vector<torch::Tensor> factor_sums(torch::Tensor g, torch::Tensor row_base, torch::Tensor col_base,
                                       int64_t row_step, int64_t col_step, int64_t rows, int64_t cols,
                                       double clip, double eps) {
  TORCH_CHECK(g.is_contiguous() && g.scalar_type() == torch::kFloat32 && g.device().is_cpu(),
              "fused: g must be contiguous float32 on CPU");
  const int64_t outer = row_base.numel(), inner = g.numel() / outer;
  auto row_sums = torch::zeros({rows}, torch::kFloat32), col_sums = torch::zeros({cols}, torch::kFloat32);
  const float* gp = g.data_ptr<float>();
  const int64_t *rb = row_base.data_ptr<int64_t>(), *cb = col_base.data_ptr<int64_t>();
  float *rs = row_sums.data_ptr<float>(), *cs = col_sums.data_ptr<float>();
  const float fclip = static_cast<float>(clip), feps = static_cast<float>(eps);
  float sq[TILE];
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i0 = 0; i0 < inner; i0 += TILE) {
      const int64_t len = std::min(TILE, inner - i0);
      const float* src = gp + o * inner + i0;
      for (int64_t i = 0; i < len; ++i) {
        const float gi = src[i] > fclip ? fclip : (src[i] < -fclip ? -fclip : src[i]);
        sq[i] = gi * gi + feps;
      }
      for (auto [sums, base, step] : {std::tuple{rs, rb[o] + i0 * row_step, row_step},
                                      std::tuple{cs, cb[o] + i0 * col_step, col_step}}) {
        if (step == 0) {
          sums[base] += sum_of(sq, len, [](float x) { return x; });
        } else {
          float* dst = sums + base;
          for (int64_t i = 0; i < len; ++i) dst[i] += sq[i];
        }
      }
    }
  }
  return {row_sums, col_sums};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("factor_sums", &factor_sums, "Adafactor row/column sums of clip(g)^2 + eps");
  module.def("feature_sums", &feature_sums, "Per-chunk feature sums of one tensor (no writes)");
  module.def("apply_update", &apply_update, "One fused per-parameter-MLP step, in place");
}
