// Fused CPU kernels for the per-parameter MLP learned optimizers (`mlp`, `velo`) at inference.
//
// The functional step (l2o/optimizers/features.py + mlp.py) is the reference; these kernels compute
// the same numbers in three passes over a parameter tensor instead of dozens of tensor ops:
//
//   factor_sums:  the row and column sums of clip(g)² that Adafactor's factors need.
//   feature_sums: new accumulators and features of every coordinate, reduced to per-tensor sums
//                 (mean squares for the RMS normalization, VeLO's |g|, |m|, sqrt(rms) statistics);
//                 nothing is written.
//   apply_update: the same features again, the MLP on them, the update; writes p and the
//                 accumulators in place.
//
// Python calls two entry points per tensor: plan_tensor (factor_sums, the new Adafactor factors,
// feature_sums) and apply_tensor (the normalization folded into the first layer, the per-row and
// per-column tables, apply_update), so the per-tensor overhead is two calls, not dozens of ops.
//
// Why it is written this way: per coordinate the MLP is ~90 multiply-adds and the features ~40
// more operations, so a pass is bound by the core's arithmetic, not by memory, unless every value
// stays in a register. Coordinates therefore go through in groups of 16 (`vp`: two AVX registers, so
// two independent chains of operations are in flight), and each feature is consumed the moment it
// is computed: squared into its sum (feature_sums) or multiplied into the first layer's hidden
// units (apply_update). Nothing per coordinate is stored except the tensors' new values. The hidden
// width is a template parameter (the weights are padded with zeros to a power of two), so the
// hidden units live in registers too.
//
// Adafactor's row/column factors are broadcast tensors; a group reads them through a per-outer-row
// base offset and a step of 0 or 1 along the last dimension (`row_base`, `row_step`), which covers
// matrices, vectors and conv weights whose factored dimensions are not the last two.
//
// A base direction with state of its own may go through the same passes (celo's: Adam on raw
// gradients with its own moments, or Nesterov momentum): the first pass also reduces its mean
// square, the second writes its new state and, instead of updating p, writes the update
// base/rms(base) + MLP to an output buffer and returns that buffer's sum of squares, so the caller
// can normalize it per tensor (and orthogonalize it) before the step. The first pass also reports
// whether any gradient entry was NaN or ±inf, so callers need no pass of their own to find them.
//
// Feature order (the "full" features of FeatureSet.names(); the row/column ones enter through the
// tables instead): g, p, m_k (K), rms, m_k*rsqrt(rms) (K), rsqrt(rms), g*rsqrt(rms),
// adafactor_g_a (A), fac_m, [clip(g, ±0.1)].

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "velo_tensor_level.h"

// x86 intrinsics only where the compiler targets AVX (fused.py passes -mavx2/-mavx512* on such
// CPUs); everywhere else (ARM, x86 without AVX) the `#else` branches below, plain GCC/Clang vector
// code the compiler lowers to the target's own vectors (NEON: two registers per group of 8).
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

constexpr int MAX_K = 4;
constexpr int MAX_A = 4;
constexpr int MAX_H = 64;
constexpr int64_t CHUNK = 16384;  // coordinates per parallel work item (fixed: results don't depend on threads)
constexpr int64_t FLUSH = 512;    // coordinates summed in float before the sums move to double
constexpr int64_t PREFETCH = 512;  // coordinates ahead the streams are prefetched

// A group of W coordinates as one GCC/Clang vector (an AVX register; two SSE ones; with AVX-512,
// W = 16, one ZMM register: the MLP's multiply-adds take half the instructions). W = 16 on AVX2 (two
// AVX registers per operation, to share each weight's load) was 7× slower: GCC 12 lowers some
// operations on vectors wider than the ISA's lane by lane. `vfu` is its unaligned-load twin.
#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vf __attribute__((vector_size(4 * W)));
typedef float vfu __attribute__((vector_size(4 * W), aligned(4)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

inline vf splat(float x) { return vf{} + x; }
inline vf load_full(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store_full(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
inline vi lane_index() {
  vi index;
  for (int l = 0; l < W; ++l) index[l] = l;
  return index;
}

#if defined(__AVX512F__)
typedef __m512 simd;
inline simd simd_max(simd a, simd b) { return _mm512_max_ps(a, b); }
inline simd simd_min(simd a, simd b) { return _mm512_min_ps(a, b); }
inline simd simd_rsqrt(simd a) { return _mm512_rsqrt14_ps(a); }  // (2^-14 relative; AVX's: 1.5·2^-12)
#elif defined(__AVX__)
typedef __m256 simd;
inline simd simd_max(simd a, simd b) { return _mm256_max_ps(a, b); }
inline simd simd_min(simd a, simd b) { return _mm256_min_ps(a, b); }
inline simd simd_rsqrt(simd a) { return _mm256_rsqrt_ps(a); }
#endif
#if defined(__AVX__)
inline simd as_avx(vf x) { return reinterpret_cast<simd>(x); }
inline vf from_avx(simd x) { return reinterpret_cast<vf>(x); }
#endif

// max(x, lo) and min(x, hi) that keep NaN, as torch's clamp and relu do: the AVX instructions return
// their second operand when either is NaN, so x goes second (one instruction, not compare + blend).
inline vf max_keep_nan(vf x, float lo) {
#if defined(__AVX__)
  return from_avx(simd_max(as_avx(splat(lo)), as_avx(x)));
#else
  return x < lo ? splat(lo) : x;
#endif
}
inline vf min_keep_nan(vf x, float hi) {
#if defined(__AVX__)
  return from_avx(simd_min(as_avx(splat(hi)), as_avx(x)));
#else
  return x > hi ? splat(hi) : x;
#endif
}
inline vf clamp_keep_nan(vf x, float bound) { return max_keep_nan(min_keep_nan(x, bound), -bound); }
inline vf relu(vf x) { return max_keep_nan(x, 0.0f); }
inline vf absolute(vf x) { return reinterpret_cast<vf>(reinterpret_cast<vi>(x) & 0x7fffffff); }

// 1/sqrt(x + eps) (x ≥ 0). With AVX: the hardware estimate refined by one Newton step (relative
// error ~1e-7, a few float ulps) instead of sqrt + divide, which cost ~4× more.
inline vf inverse_sqrt(vf x, float eps) {
  const vf v = x + eps;
#if defined(__AVX__)
  const vf y = from_avx(simd_rsqrt(as_avx(v)));
  return y * (1.5f - 0.5f * v * y * y);
#else
  vf out;
  for (int l = 0; l < W; ++l) out[l] = 1.0f / std::sqrt(v[l]);
  return out;
#endif
}

// sqrt(x) (x ≥ 0) as x·rsqrt(x) with the refined estimate, ~1e-7 relative (vsqrtps costs ~4×
// more). Below the smallest normal float (where the estimate is inf) it gives 0, off by < 1.1e-19;
// NaN stays NaN.
inline vf square_root(vf x) {
#if defined(__AVX__)
  const vf y = from_avx(simd_rsqrt(as_avx(x)));
  const vf root = x * (y * (1.5f - 0.5f * x * y * y));
  return x < 1.17549435e-38f ? vf{} : root;
#else
  vf out;
  for (int l = 0; l < W; ++l) out[l] = std::sqrt(x[l]);
  return out;
#endif
}

// exp(x), Cephes' expf inlined (≤ 2 ulp; ATen's vectorized Sleef exp is an out-of-line call per group):
// x = n·ln2 + r with |r| ≤ ln2/2, a degree-5 polynomial for exp(r), and 2^n as two factors
// 2^⌊n/2⌋·2^⌈n/2⌉ built from exponent bits, so overflow gives inf and underflow denormals or 0, as
// torch.exp. NaN stays NaN.
inline vf exponential(vf x) {
  const vf clamped = x > 88.8f ? splat(88.8f) : (x < -104.0f ? splat(-104.0f) : x);
  const vf fx = clamped * 1.44269504088896341f + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);  // truncation, then floor:
  n = n > fx ? n - 1.0f : n;
  const vf r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vi ni = __builtin_convertvector(n, vi), half = ni >> 1;
  y = y * reinterpret_cast<vf>((half + 127) << 23) * reinterpret_cast<vf>((ni - half + 127) << 23);
  return x < -104.0f ? vf{} : y;
}

// A group: NV registers' worth of consecutive coordinates that go through the code together. One
// group's work is a long chain of dependent operations (features → first layer → hidden layers →
// exp → update, ~180 cycles) that the core cannot overlap with the next group's, so a single
// register per group left it waiting on latency; two independent registers per group halve that.
constexpr int NV = 2;
constexpr int64_t GROUP = NV * W;
struct vp {
  vf v[NV];
};

inline vp pack(vf x) {
  vp out;
  for (int i = 0; i < NV; ++i) out.v[i] = x;
  return out;
}
inline vp splat_group(float x) { return pack(splat(x)); }
template <class F>
__attribute__((always_inline)) inline vp map(vp x, F f) {
  for (int i = 0; i < NV; ++i) x.v[i] = f(x.v[i]);
  return x;
}
#define L2O_PACK_OPERATOR(op)                                                                             \
  inline vp operator op(vp a, const vp& b) {                                                               \
    for (int i = 0; i < NV; ++i) a.v[i] = a.v[i] op b.v[i];                                                \
    return a;                                                                                              \
  }                                                                                                        \
  inline vp operator op(vp a, float b) { return map(a, [b](vf x) { return x op b; }); }                     \
  inline vp operator op(float a, vp b) { return map(b, [a](vf x) { return a op x; }); }                     \
  inline vp operator op(const vf& a, vp b) { return map(b, [&a](vf x) { return a op x; }); }
L2O_PACK_OPERATOR(+)
L2O_PACK_OPERATOR(-)
L2O_PACK_OPERATOR(*)
L2O_PACK_OPERATOR(/)
#undef L2O_PACK_OPERATOR
inline vp& operator+=(vp& a, const vp& b) { return a = a + b; }

inline vp clamp_keep_nan(vp x, float bound) { return map(x, [bound](vf v) { return clamp_keep_nan(v, bound); }); }
inline vp relu(vp x) { return map(x, [](vf v) { return relu(v); }); }
inline vp absolute(vp x) { return map(x, [](vf v) { return absolute(v); }); }
inline vp inverse_sqrt(vp x, float eps) { return map(x, [eps](vf v) { return inverse_sqrt(v, eps); }); }
inline vp square_root(vp x) { return map(x, [](vf v) { return square_root(v); }); }
inline vp exponential(vp x) { return map(x, [](vf v) { return exponential(v); }); }

inline bool any_lane(vi mask) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask(reinterpret_cast<__m512i>(mask), reinterpret_cast<__m512i>(mask)) != 0;
#elif defined(__AVX__)
  return !_mm256_testz_si256(reinterpret_cast<__m256i>(mask), reinterpret_cast<__m256i>(mask));
#else
  for (int l = 0; l < W; ++l)
    if (mask[l]) return true;
  return false;
#endif
}

// exp(x) where x is usually tiny (the update's exp_mult·μ, exp_mult = 0.001): when every lane has
// |x| ≤ 1/64, the degree-4 Taylor polynomial (relative error < 1e-11, below float rounding), a
// chain of 4 multiply-adds instead of Cephes' ~14 operations, whose latency bounded the update;
// otherwise (and for inf) Cephes. NaN takes the polynomial and stays NaN.
inline vp exponential_near_zero(vp x) {
  vi outside{};
  for (int i = 0; i < NV; ++i) outside |= absolute(x.v[i]) > (1.0f / 64);
  if (any_lane(outside)) return exponential(x);
  return map(x, [](vf v) { return 1.0f + v * (1.0f + v * (0.5f + v * (1.0f / 6 + v * (1.0f / 24)))); });
}

// A group's first `len` coordinates (the rest 0) and their store: `len` < GROUP only in a row's last.
inline vp load_group(const float* p, int64_t len) {
  float buf[GROUP] = {};
  if (len < GROUP) {
    std::memcpy(buf, p, len * sizeof(float));
    p = buf;
  }
  vp out;
  for (int i = 0; i < NV; ++i) out.v[i] = load_full(p + i * W);
  return out;
}
inline void store_group(float* p, const vp& x, int64_t len) {
  if (len == GROUP) {
    for (int i = 0; i < NV; ++i) store_full(p + i * W, x.v[i]);
    return;
  }
  float buf[GROUP];
  for (int i = 0; i < NV; ++i) store_full(buf + i * W, x.v[i]);
  std::memcpy(p, buf, len * sizeof(float));
}
// All ones in the lanes of a group's first `len` coordinates, zeros after.
inline vp lane_mask(int64_t len) {
  vp out;
  for (int i = 0; i < NV; ++i) out.v[i] = reinterpret_cast<vf>(lane_index() + i * W < static_cast<int32_t>(len));
  return out;
}
inline vp keep_lanes(vp x, const vp& mask) {
  for (int i = 0; i < NV; ++i) x.v[i] = reinterpret_cast<vf>(reinterpret_cast<vi>(x.v[i]) & reinterpret_cast<vi>(mask.v[i]));
  return x;
}

// Feature slots at fixed positions, so the compiler sees constant indices once loops over k < MAX_K
// and a < MAX_A are unrolled (slots past K or A are skipped).
enum Slot : int {
  S_G = 0,
  S_P = 1,
  S_M = 2,
  S_RMS = S_M + MAX_K,
  S_MINV = S_RMS + 1,
  S_INV = S_MINV + MAX_K,
  S_GINV = S_INV + 1,
  S_ADA = S_GINV + 1,
  S_FM = S_ADA + MAX_A,
  S_SC = S_FM + 1,
  S_ROW = S_SC + 1,  // the row factors, where they are per coordinate (row_features)
  N_SLOTS = S_ROW + MAX_A,
};

struct Inputs {
  float* p;
  const float* g;
  float* m;  // (K, n)
  float* rms;
  float* fac_m;
  const float* rowtab;  // (width, rows): A factors, then (apply) the first layer's per-row part
  const float* coltab;  // (width, cols)
  const int64_t* row_base;
  const int64_t* col_base;
  int64_t outer, inner, n, row_step, col_step, rows, cols;
  int K, A, n_full;
  bool small_clip;
  // apply, where a row factor is per coordinate (vectors: the (n, 1) view's row accumulator is
  // the full second moment): the factors enter the first layer as features, not through a per-row
  // table of each hidden unit's part, which would be (A + H)·n floats to build and read.
  bool row_features = false;
  // Where row factors are per coordinate (row_features), the row table holds the new row
  // accumulators instead, and a group takes rsqrt(x·row_scale[a]) of them (no (A, n) factor array
  // is made; made fresh each step it cost more in page faults than the whole pass).
  bool row_rsqrt = false;
  float row_scale[MAX_A];
  float clip, mom[MAX_K], mom_c[MAX_K], rms_decay, rms_c, fm_decay, fm_c;  // *_c: 1 - decay
  int feature_of[N_SLOTS];  // slot -> index in the feature order above (-1: unused)
  // The base direction with its own state (BASE_*; make_base), and apply's output buffer (nullptr:
  // update p in place).
  int base = 0;
  float *base_m = nullptr, *base_v = nullptr, *out = nullptr;
  float base_b1, base_b1c, base_b2, base_b2c, base_inv_c1, base_inv_c2_sqrt, base_eps;  // (reciprocals: no divides)
};

// Base directions (of the raw, unclipped gradient g, as the transforms they stand for):
// BASE_ADAM: m ← b1·m + (1-b1)·g, v ← b2·v + (1-b2)·g², direction (m/c1)/(sqrt(v)/c2_sqrt + eps)
//   (transforms.ScaleByAdam; constants [b1, b2, c1, c2_sqrt, eps]);
// BASE_NESTEROV: buf ← b1·buf + g, direction g + b1·buf (transforms.TraceMomentum(nesterov); [b1]).
enum Base : int { BASE_NONE = 0, BASE_ADAM = 1, BASE_NESTEROV = 2 };

void make_base(Inputs& in, int64_t kind, const std::vector<torch::Tensor>& state, const std::vector<double>& c) {
  in.base = static_cast<int>(kind);
  if (kind == BASE_NONE) return;
  const size_t tensors = kind == BASE_ADAM ? 2 : 1, consts = kind == BASE_ADAM ? 5 : 1;
  TORCH_CHECK((kind == BASE_ADAM || kind == BASE_NESTEROV) && state.size() == tensors && c.size() == consts,
              "fused: bad base direction");
  for (const auto& t : state)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat32 && t.device().is_cpu() && t.numel() == in.n,
                "fused: the base direction's state must be contiguous float32 on CPU, shaped as p");
  in.base_m = state[0].data_ptr<float>();
  if (kind == BASE_ADAM) in.base_v = state[1].data_ptr<float>();
  in.base_b1 = static_cast<float>(c[0]);
  in.base_b1c = static_cast<float>(1.0 - c[0]);
  if (kind == BASE_ADAM) {
    in.base_b2 = static_cast<float>(c[1]);
    in.base_b2c = static_cast<float>(1.0 - c[1]);
    in.base_inv_c1 = static_cast<float>(1.0 / c[2]);
    in.base_inv_c2_sqrt = static_cast<float>(1.0 / c[3]);
    in.base_eps = static_cast<float>(c[4]);
  }
}

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
  in.rows = rowtab.size(1);
  in.cols = coltab.size(1);
  in.K = static_cast<int>(decays.size()) - 2;
  TORCH_CHECK(in.K >= 1 && in.K <= MAX_K && m.numel() == in.K * n, "fused: bad momentum decays / m");
  in.A = static_cast<int>(n_ada);
  TORCH_CHECK(in.A >= 1 && in.A <= MAX_A, "fused: bad number of Adafactor decays");
  const int K = in.K, A = in.A;
  in.n_full = 2 * K + A + 6 + (small_clip ? 1 : 0);
  in.small_clip = small_clip;
  in.clip = static_cast<float>(clip);
  for (int k = 0; k < K; ++k) {
    in.mom[k] = static_cast<float>(decays[k]);
    in.mom_c[k] = static_cast<float>(1.0 - decays[k]);
  }
  in.rms_decay = static_cast<float>(decays[K]);
  in.rms_c = 1.0f - in.rms_decay;
  in.fm_decay = static_cast<float>(decays[K + 1]);
  in.fm_c = 1.0f - in.fm_decay;
  std::fill(in.feature_of, in.feature_of + N_SLOTS, -1);
  in.feature_of[S_G] = 0;
  in.feature_of[S_P] = 1;
  for (int k = 0; k < K; ++k) {
    in.feature_of[S_M + k] = 2 + k;
    in.feature_of[S_MINV + k] = 3 + K + k;
  }
  in.feature_of[S_RMS] = 2 + K;
  in.feature_of[S_INV] = 3 + 2 * K;
  in.feature_of[S_GINV] = 4 + 2 * K;
  for (int a = 0; a < A; ++a) in.feature_of[S_ADA + a] = 5 + 2 * K + a;
  in.feature_of[S_FM] = 5 + 2 * K + A;
  if (small_clip) in.feature_of[S_SC] = 6 + 2 * K + A;
  return in;
}

// Where one group of (up to) GROUP coordinates of one outer row lives.
struct Group {
  int64_t e;      // flat index of the first coordinate
  int64_t rb, cb;  // offsets of its row / column factors in the tables' columns
  int64_t len;     // GROUP, or fewer for a row's last group
};

// Column `col` of a (width, count) table at a group: one broadcast value (step 0) or a run (step 1).
inline vp table(const float* tab, int64_t count, int col, int64_t base, int64_t step, int64_t len) {
  const float* src = tab + col * count + base;
  return step == 0 ? splat_group(*src) : load_group(src, len);
}

// The new accumulators and every feature of a group. `sink` receives each feature once, as
// sink.feature(slot, value), and the new accumulators as sink.m(k, value), sink.rms(value),
// sink.fac_m(value), a base direction's new state and value as sink.base_state(m, v) and
// sink.base(value); every call is inlined and every slot a constant, so nothing leaves registers.
template <bool FULL, class Sink>
__attribute__((always_inline)) inline void group_features(const Inputs& in, const Group& q, Sink& sink) {
  const int64_t e = q.e, len = FULL ? GROUP : q.len;
  const vp raw = load_group(in.g + e, len);
  const vp g = clamp_keep_nan(raw, in.clip);
  if (in.base == BASE_ADAM) {
    const vp m = in.base_b1 * load_group(in.base_m + e, len) + in.base_b1c * raw;
    const vp v = in.base_b2 * load_group(in.base_v + e, len) + (in.base_b2c * raw) * raw;
    sink.base_state(m, v);
    sink.base((m * in.base_inv_c1) / (square_root(v) * in.base_inv_c2_sqrt + in.base_eps));
  } else if (in.base == BASE_NESTEROV) {
    const vp buf = in.base_b1 * load_group(in.base_m + e, len) + raw;
    sink.base_state(buf, buf);
    sink.base(raw + in.base_b1 * buf);
  }
  sink.feature(S_G, g);
  sink.feature(S_P, load_group(in.p + e, len));
  const vp r = in.rms_decay * load_group(in.rms + e, len) + in.rms_c * (g * g);
  sink.rms(r);
  sink.feature(S_RMS, r);
  const vp inv = inverse_sqrt(r, 1e-8f);
  sink.feature(S_INV, inv);
  sink.feature(S_GINV, g * inv);
  // Loops to the maximum with a guard (not a break), so they unroll and every slot is a constant.
#pragma GCC unroll 4
  for (int k = 0; k < MAX_K; ++k) {
    if (k < in.K) {
      const vp mk = in.mom[k] * load_group(in.m + k * in.n + e, len) + in.mom_c[k] * g;
      sink.m(k, mk);
      sink.feature(S_M + k, mk);
      sink.feature(S_MINV + k, mk * inv);
    }
  }
  vp ada{};
#pragma GCC unroll 4
  for (int a = 0; a < MAX_A; ++a) {
    if (a < in.A) {
      vp rf = table(in.rowtab, in.rows, a, q.rb, in.row_step, len);
      if (in.row_rsqrt) rf = inverse_sqrt(rf * in.row_scale[a], 0.0f);
      const vp cf = table(in.coltab, in.cols, a, q.cb, in.col_step, len);
      if (in.row_features) sink.feature(S_ROW + a, rf);
      ada = g * rf * cf;
      sink.feature(S_ADA + a, ada);
    }
  }
  const vp fm = in.fm_decay * load_group(in.fac_m + e, len) + in.fm_c * ada;  // last decay's
  sink.fac_m(fm);
  sink.feature(S_FM, fm);
  if (in.small_clip) sink.feature(S_SC, clamp_keep_nan(g, 0.1f));
}

// Calls fn(group) for every group of rows [row_begin, row_end), and fn.flush() every FLUSH
// coordinates and at the end of each row, prefetching the streams ahead.
// Inlined, so that the caller's copy of Inputs and its sink stay in registers: nothing outside can
// see them, and stores into the tensors cannot alias them.
template <class Fn>
__attribute__((always_inline)) inline void for_each_group(const Inputs& in, int64_t row_begin, int64_t row_end, Fn& fn) {
  for (int64_t o = row_begin; o < row_end; ++o) {
    for (int64_t i0 = 0; i0 < in.inner; i0 += FLUSH) {
      const int64_t i1 = std::min(in.inner, i0 + FLUSH);
      for (int64_t i = i0; i < i1; i += GROUP) {
        const int64_t e = o * in.inner + i;
        // The hardware prefetcher alone does not keep K+4 interleaved streams in flight.
        if (e + PREFETCH < in.n) {  // about once per 64-byte line
          __builtin_prefetch(in.g + e + PREFETCH);
          __builtin_prefetch(in.p + e + PREFETCH);
          __builtin_prefetch(in.rms + e + PREFETCH);
          __builtin_prefetch(in.fac_m + e + PREFETCH);
          for (int k = 0; k < in.K; ++k) __builtin_prefetch(in.m + k * in.n + e + PREFETCH);
        }
        const Group q{e, in.row_base[o] + i * in.row_step, in.col_base[o] + i * in.col_step, std::min<int64_t>(GROUP, in.inner - i)};
        fn(q);
      }
      fn.flush();
    }
  }
}

int64_t rows_per_chunk(const Inputs& in) { return std::max<int64_t>(1, CHUNK / in.inner); }

// The sum of x's lanes, in double; x is reset to zero.
inline double take_sum(vf& x) {
  double s = 0;
  for (int l = 0; l < W; ++l) s += x[l];
  x = vf{};
  return s;
}
// A group's lanes folded into one register (x.v[0] + x.v[1] + ...).
inline vf fold(const vp& x) {
  vf out = x.v[0];
  for (int i = 1; i < NV; ++i) out += x.v[i];
  return out;
}

// feature_sums' per-chunk accumulation: float vector sums, moved to double every FLUSH coordinates
// (float alone would lose digits over a million coordinates). The ~20 sums cannot stay in
// registers, so each group's update is a load-add-store: they are one register wide (a group's
// lanes folded first), half the stores of group-wide sums, and live in an array GCC sees only
// through an opaque pointer (otherwise it promotes them, spills them, and stores each update to
// both the spill slot and the array). STATS: VeLO's statistics Σ|g|, Σ|m_k|, Σsqrt(rms) too.
enum Sum : int { SUM_ABS_G = N_SLOTS, SUM_ABS_M, SUM_SQRT_RMS = SUM_ABS_M + MAX_K, SUM_BASE, N_SUMS };

template <bool STATS>
struct SumSink {
  const Inputs& in;
  vf* sums;        // (N_SUMS,): Σf² per feature slot, then the statistics
  double* totals;  // (N_SUMS,)

  // What group_features calls; PARTIAL (a row's last group) zeroes the lanes past its length first.
  template <bool PARTIAL>
  struct View {
    SumSink& s;
    vp mask;
    __attribute__((always_inline)) inline vp valid(vp x) const { return PARTIAL ? keep_lanes(x, mask) : x; }
    __attribute__((always_inline)) inline void feature(int slot, vp x) {
      x = valid(x);
      s.sums[slot] += fold(x * x);
      if (STATS && slot == S_G) s.sums[SUM_ABS_G] += fold(absolute(x));
    }
    __attribute__((always_inline)) inline void m(int k, vp x) {
      if (STATS) s.sums[SUM_ABS_M + k] += fold(absolute(valid(x)));
    }
    __attribute__((always_inline)) inline void rms(vp x) {
      if (STATS) s.sums[SUM_SQRT_RMS] += fold(square_root(valid(x)));
    }
    __attribute__((always_inline)) inline void fac_m(vp) {}
    __attribute__((always_inline)) inline void base_state(vp, vp) {}
    __attribute__((always_inline)) inline void base(vp x) {
      x = valid(x);
      s.sums[SUM_BASE] += fold(x * x);
    }
  };

  __attribute__((always_inline)) inline void operator()(const Group& q) {
    if (q.len == GROUP) {
      View<false> view{*this, vp{}};
      group_features<true>(in, q, view);
    } else {
      View<true> view{*this, lane_mask(q.len)};
      group_features<false>(in, q, view);
    }
  }

  __attribute__((always_inline)) inline void flush() {
    for (int s = 0; s < (STATS || in.base ? N_SUMS : N_SLOTS); ++s) totals[s] += take_sum(sums[s]);
  }
};

// One chunk's sums into row (n_full + K + 3 doubles).
template <bool STATS>
void chunk_sums(const Inputs& in, int64_t row_begin, int64_t row_end, double* row) {
  const Inputs local = in;
  alignas(sizeof(vf)) vf storage[N_SUMS] = {};
  double totals[N_SUMS] = {};
  vf* sums = storage;
  asm("" : "+r"(sums));  // an opaque pointer: GCC cannot promote the sums (see SumSink)
  SumSink<STATS> sink{local, sums, totals};
  for_each_group(local, row_begin, row_end, sink);
  for (int s = 0; s < N_SLOTS; ++s)
    if (in.feature_of[s] >= 0) row[in.feature_of[s]] = totals[s];
  if (STATS) {
    row[in.n_full] = totals[SUM_ABS_G];
    for (int k = 0; k < in.K; ++k) row[in.n_full + 1 + k] = totals[SUM_ABS_M + k];
    row[in.n_full + 1 + in.K] = totals[SUM_SQRT_RMS];
  }
  row[in.n_full + 2 + in.K] = totals[SUM_BASE];
}

// The tensor's sums (n_full + K + 3), in double: Σf² of each full feature, then (if `stats`; zeros
// otherwise) Σ|g|, Σ|m_k|, Σsqrt(rms), VeLO's tensor statistics, then Σbase² (0 without a base). Made per fixed-size chunk and added
// in a fixed order, so results do not depend on the number of threads.
std::vector<double> feature_sums(const Inputs& in, bool stats) {
  const int64_t per = rows_per_chunk(in);
  const int64_t chunks = (in.outer + per - 1) / per;
  const int width = in.n_full + in.K + 3;
  std::vector<double> acc(chunks * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * per, r1 = std::min(in.outer, (c + 1) * per);
      if (stats)
        chunk_sums<true>(in, r0, r1, acc.data() + c * width);
      else
        chunk_sums<false>(in, r0, r1, acc.data() + c * width);
    }
  });
  std::vector<double> total(width, 0.0);  // chunks added in order: thread-independent
  for (int64_t c = 0; c < chunks; ++c)
    for (int j = 0; j < width; ++j) total[j] += acc[c * width + j];
  return total;
}

// The per-parameter MLP after its first layer's row/column/bias part, hidden width padded to HB,
// every weight and bias pre-broadcast to a whole group (`splat`), so each multiply-add takes its
// weight straight from L1 as a memory operand instead of a broadcast + multiply-add pair.
struct Mlp {
  int HB = 0;
  std::vector<vf> w0;      // (N_SLOTS, HB): each slot's first-layer row, normalization folded in
  std::vector<vf> hidden;  // per hidden layer after the first: (HB, HB) weights, then (HB,) biases
  std::vector<vf> out;     // (HB, 2) weights, then the 2 biases
  int n_hidden = 0;
  int active[N_SLOTS], n_active = 0;  // the slots in use (wide MLPs loop over them)
  float scale, exp_mult, adam_lr, bias_c1, bias_c2, eps, base_coef;

  const vf* layer(int l) const { return hidden.data() + l * (HB * HB + HB); }
};

// out[j] += Σ_i x_i·w[i·HB + j] (ReLU on the inputs if asked) for j < HB, over `n_in` inputs
// `x[at[i]]` (at = nullptr: i itself). Small widths keep all HB sums in registers; wide ones go in
// blocks of BLOCK outputs, each block's sums in registers while every input passes once.
template <int HB, bool RELU>
__attribute__((always_inline)) inline void dense(const vp* x, const int* at, int n_in, const vf* w, vp* out) {
  constexpr int BLOCK = HB < 4 ? HB : 4;
  for (int j0 = 0; j0 < HB; j0 += BLOCK) {
    vp acc[BLOCK];
#pragma GCC unroll 4
    for (int jj = 0; jj < BLOCK; ++jj) acc[jj] = out[j0 + jj];
#pragma GCC unroll 8
    for (int i = 0; i < n_in; ++i) {  // unrolled: with n_in = HB ≤ 8 the inputs stay in registers
      const int from = at ? at[i] : i;
      const vp v = RELU ? relu(x[from]) : x[from];
      const vf* wi = w + from * HB + j0;
#pragma GCC unroll 4
      for (int jj = 0; jj < BLOCK; ++jj) acc[jj] += wi[jj] * v;
    }
#pragma GCC unroll 4
    for (int jj = 0; jj < BLOCK; ++jj) out[j0 + jj] = acc[jj];
  }
}

// apply_update's per-group work. Up to STREAM hidden units, each feature goes straight into all of
// them the moment it is computed; wider MLPs keep the features and run the first layer in blocks.
// The new accumulators go straight to memory (their old values were read just before).
template <int HB>
struct ApplySink {
  static constexpr int STREAM = 8;
  const Inputs& in;
  const Mlp& net;
  const vf* w0;  // net.w0.data(): each slot's HB first-layer weights
  Group q;
  int64_t len;  // q.len, or the constant GROUP in a full group
  vp h[HB];
  vp feats[HB > STREAM ? N_SLOTS : 1];
  vf squares{};       // output mode: Σ update² of the groups since the last flush, lane by lane
  double total = 0;  // ... and before it

  __attribute__((always_inline)) inline void feature(int slot, vp x) {
    if constexpr (HB > STREAM) {
      feats[slot] = x;
    } else {
      const vf* w = w0 + slot * HB;
#pragma GCC unroll 8
      for (int j = 0; j < HB; ++j) h[j] += w[j] * x;
    }
  }
  // The new accumulators go to memory at once; what the update needs later (p, m_0, rms) is read
  // back from L1 then, which is cheaper than holding registers through the MLP.
  __attribute__((always_inline)) inline void m(int k, vp x) { store_group(in.m + k * in.n + q.e, x, len); }
  __attribute__((always_inline)) inline void rms(vp x) { store_group(in.rms + q.e, x, len); }
  __attribute__((always_inline)) inline void fac_m(vp x) { store_group(in.fac_m + q.e, x, len); }
  __attribute__((always_inline)) inline void base_state(vp m, vp v) {
    store_group(in.base_m + q.e, m, len);
    if (in.base == BASE_ADAM) store_group(in.base_v + q.e, v, len);
  }
  // The base direction waits in the output buffer (only used with one) until the MLP is done.
  __attribute__((always_inline)) inline void base(vp x) { store_group(in.out + q.e, x, len); }

  template <bool FULL>
  __attribute__((always_inline)) inline void run(const Group& group) {
    q = group;
    len = FULL ? GROUP : q.len;
#pragma GCC unroll 8
    for (int j = 0; j < HB; ++j) {  // the row/column part of the first layer, its bias included
      h[j] = table(in.coltab, in.cols, in.A + j, q.cb, in.col_step, len);
      if (!in.row_features) h[j] += table(in.rowtab, in.rows, in.A + j, q.rb, in.row_step, len);
    }
    group_features<FULL>(in, q, *this);
    if constexpr (HB > STREAM) dense<HB, false>(feats, net.active, net.n_active, w0, h);
    for (int l = 0; l < net.n_hidden; ++l) {
      const vf* w = net.layer(l);
      vp next[HB];
#pragma GCC unroll 8
      for (int j = 0; j < HB; ++j) next[j] = pack(w[HB * HB + j]);  // the biases
      dense<HB, true>(h, nullptr, HB, w, next);
#pragma GCC unroll 8
      for (int j = 0; j < HB; ++j) h[j] = next[j];
    }
    const vf* w = net.out.data();
    vp d = pack(w[2 * HB]), mu = pack(w[2 * HB + 1]);
#pragma GCC unroll 8
    for (int i = 0; i < HB; ++i) {
      const vp x = relu(h[i]);
      d += w[2 * i] * x;
      mu += w[2 * i + 1] * x;
    }
    vp update = net.scale * d;
    if (net.adam_lr != 0.0f) {
      const vp m0 = load_group(in.m + q.e, len), r = load_group(in.rms + q.e, len);
      update += net.adam_lr * (m0 / net.bias_c1) / (square_root(r / net.bias_c2) + net.eps);
    }
    if (net.exp_mult != 0.0f) update = exponential_near_zero(net.exp_mult * mu) * update;
    if (in.out == nullptr) {
      const vp p_old = load_group(in.p + q.e, len);
      store_group(in.p + q.e, p_old - update, len);
      return;
    }
    if (in.base) update += net.base_coef * load_group(in.out + q.e, len);
    store_group(in.out + q.e, update, len);
    const vp kept = FULL ? update : keep_lanes(update, lane_mask(len));
    squares += fold(kept * kept);
  }
  __attribute__((always_inline)) inline void operator()(const Group& group) {
    if (group.len == GROUP)
      run<true>(group);
    else
      run<false>(group);
  }
  __attribute__((always_inline)) inline void flush() { total += take_sum(squares); }
};

// Rows [row_begin, row_end); returns Σ update² in output mode (0 otherwise).
template <int HB>
double apply_rows(const Inputs& shared_in, const Mlp& shared_net, int64_t row_begin, int64_t row_end) {
  const Inputs in = shared_in;
  const Mlp net = shared_net;
  ApplySink<HB> sink{in, net, net.w0.data()};
  for_each_group(in, row_begin, row_end, sink);
  return sink.total;
}

// One step, in place: the features again, the MLP, the update; writes p (or, in output mode, the
// output buffer) and the accumulators. Returns Σ update² in output mode, per fixed-size chunk and
// added in order, so it does not depend on the number of threads.
double apply_update(const Inputs& in, const Mlp& net) {
  const int64_t per = rows_per_chunk(in);
  const int64_t chunks = (in.outer + per - 1) / per;
  std::vector<double> squares(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * per, r1 = std::min(in.outer, (c + 1) * per);
      switch (net.HB) {
#define L2O_WIDTH(HB)                                 \
  case HB:                                            \
    squares[c] = apply_rows<HB>(in, net, r0, r1);     \
    break;
        L2O_WIDTH(2) L2O_WIDTH(4) L2O_WIDTH(8) L2O_WIDTH(16) L2O_WIDTH(32) L2O_WIDTH(64)
#undef L2O_WIDTH
        default:
          TORCH_CHECK(false, "fused: hidden width must be padded to 2, 4, ..., ", MAX_H);
      }
    }
  });
  double total = 0;
  for (double s : squares) total += s;
  return total;
}

// Adafactor's first pass: Σ over the factored-out dimension of clip(g)² + eps, for the row and the
// column accumulators ((rows,) and (cols,) in their flattened layouts). Serial: it only reads g.
// Returns whether any entry of g is NaN or ±inf (x·0 is NaN exactly for those; one multiply-add).
// `rows_once`: every row sum has one term (per-coordinate rows), so rs is written, not added to.
bool factor_sums(const float* gp, const int64_t* rb, const int64_t* cb, int64_t outer, int64_t inner,
                 int64_t row_step, int64_t col_step, float clip, float eps, float* rs, float* cs, bool rows_once) {
  vp nonfinite{};
  for (int64_t o = 0; o < outer; ++o) {
    vf along_row{}, along_col{};  // the sums of a factor whose step is 0 (constant along the row)
    for (int64_t i = 0; i < inner; i += GROUP) {
      const int64_t len = std::min<int64_t>(GROUP, inner - i);
      const vp raw = load_group(gp + o * inner + i, len);
      nonfinite += raw * 0.0f;
      const vp gi = clamp_keep_nan(raw, clip);
      vp sq = gi * gi + eps;
      if (len < GROUP) sq = keep_lanes(sq, lane_mask(len));
      if (row_step == 0)
        along_row += fold(sq);
      else
        store_group(rs + rb[o] + i, rows_once ? sq : load_group(rs + rb[o] + i, len) + sq, len);
      if (col_step == 0)
        along_col += fold(sq);
      else
        store_group(cs + cb[o] + i, load_group(cs + cb[o] + i, len) + sq, len);
    }
    if (row_step == 0) rs[rb[o]] += take_sum(along_row);
    if (col_step == 0) cs[cb[o]] += take_sum(along_col);
  }
  vf folded = fold(nonfinite);
  return std::isnan(take_sum(folded));
}

// Σf(x) of a float array in double: float vector sums moved to double every FLUSH entries.
template <class F>
double vector_sum(const float* x, int64_t n, F f) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += FLUSH) {
    const int64_t i1 = std::min(n, i0 + FLUSH);
    vf acc{};
    int64_t i = i0;
    for (; i + W <= i1; i += W) acc += f(load_full(x + i));
    for (; i < i1; ++i) total += f(splat(x[i]))[0];
    total += take_sum(acc);
  }
  return total;
}
const auto square = [](vf v) { return v * v; };

// x ← beta·x + keep·s over an array, in place, with (Σx, Σ1/x) of the new values in double: the
// per-coordinate row accumulators of a vector in one pass.
std::pair<double, double> row_ema_sums(float* x, const float* s, int64_t n, float beta, float keep) {
  double total = 0, inverse = 0;
  for (int64_t i0 = 0; i0 < n; i0 += FLUSH) {
    const int64_t i1 = std::min(n, i0 + FLUSH);
    vf acc{}, acc_inverse{};
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const vf v = beta * load_full(x + i) + keep * load_full(s + i);
      store_full(x + i, v);
      acc += v;
      acc_inverse += 1.0f / v;
    }
    for (; i < i1; ++i) {
      x[i] = beta * x[i] + keep * s[i];
      total += x[i];
      inverse += 1.0 / x[i];
    }
    total += take_sum(acc);
    inverse += take_sum(acc_inverse);
  }
  return {total, inverse};
}

// Whether a tensor's row factors are per coordinate (vectors): see Inputs::row_features.
bool per_coordinate_rows(int64_t rows, int64_t n, int64_t row_step) { return rows == n && row_step == 1; }

int64_t power_of_two_width(int64_t hidden) {
  int64_t width = 2;
  while (width < hidden) width *= 2;
  return width;
}

torch::Tensor float32(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.device().is_cpu(), "fused: ", what, " must be float32 on CPU");
  return t.contiguous();
}

}  // namespace

// First pass over one tensor: its new Adafactor accumulators (written in place) and factors and its
// feature statistics. Returns [fac_row, fac_col (the new accumulators: the tensors given),
// row_factor (A, rows) (per-coordinate row factors: the new fac_row, whose factor is
// rsqrt(x·row_scale[a])), col_factor (A, cols), summary, row_scale (A,)], where summary (float32) holds the mean squares
// of the n_full per-coordinate features, of the A row and the A column factors, then (if `stats`)
// mean |g|, mean |m_k| (K), mean sqrt(rms), then the base direction's mean square (`base_kind`,
// `base_state`, `base_consts`: make_base; 0 without one), then 1 if any entry of g is NaN or ±inf
// (else 0). With `stop_if_nonfinite`, such an entry ends the call before anything is written, and
// only summary[-1] (1) means anything. `d_row`: the dimension of fac_row[a] that Adafactor's
// reconstruction averages over (v̂ = row·col/mean(row)).
std::vector<torch::Tensor> plan_tensor(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor rms,
                                       torch::Tensor fac_m, torch::Tensor fac_row, torch::Tensor fac_col,
                                       torch::Tensor row_base, torch::Tensor col_base, int64_t row_step,
                                       int64_t col_step, int64_t d_row, std::vector<double> decays,
                                       std::vector<double> ada_decays, double clip, double ada_eps, bool small_clip,
                                       bool stats, int64_t base_kind, std::vector<torch::Tensor> base_state,
                                       std::vector<double> base_consts, bool stop_if_nonfinite) {
  g = float32(g, "g");
  fac_row = float32(fac_row, "fac_row");
  fac_col = float32(fac_col, "fac_col");
  const int64_t A = static_cast<int64_t>(ada_decays.size()), n = p.numel();
  TORCH_CHECK(A >= 1 && A <= MAX_A && fac_row.size(0) == A && fac_col.size(0) == A, "fused: bad Adafactor decays");
  const int64_t rows = fac_row.numel() / A, cols = fac_col.numel() / A, outer = row_base.numel();
  // Reused between calls: made fresh, a vector's (n,) sums cost page faults on every step.
  static thread_local std::vector<float> row_sums, col_sums;
  const bool row_features = per_coordinate_rows(rows, n, row_step);
  if (row_features)
    row_sums.resize(rows);  // each written once
  else
    row_sums.assign(rows, 0.0f);
  col_sums.assign(cols, 0.0f);
  const bool nonfinite = factor_sums(g.data_ptr<float>(), row_base.data_ptr<int64_t>(), col_base.data_ptr<int64_t>(), outer, n / outer,
              row_step, col_step, static_cast<float>(clip), static_cast<float>(ada_eps), row_sums.data(),
              col_sums.data(), row_features);
  if (nonfinite && stop_if_nonfinite) {  // the caller contains g and plans again: nothing written
    const auto flag = torch::ones({1}, torch::kFloat32);  // summary[-1]: non-finite
    return {fac_row, fac_col, fac_row, fac_col, flag, flag};
  }

  // The accumulators' EMAs of the means (in place), and the factors rsqrt(row/mean over d_row of
  // row), rsqrt(col); per-coordinate row factors are left to the passes (row_scale = 1/mean).
  const int64_t along = fac_row.size(d_row + 1), stride = fac_row.stride(d_row + 1);
  TORCH_CHECK(!row_features || rows == along, "fused: per-coordinate row factors need one mean");
  auto new_row = fac_row, new_col = fac_col;
  auto row_factor = row_features ? new_row.view({A, rows}) : torch::empty({A, rows}, torch::kFloat32);
  auto col_factor = torch::empty({A, cols}, torch::kFloat32), row_scale = torch::ones({A}, torch::kFloat32);
  const float per_row = static_cast<float>(n / rows), per_col = static_cast<float>(n / cols);
  std::vector<double> mean(rows / along);
  double inverse_row_sums[MAX_A] = {};
  for (int64_t a = 0; a < A; ++a) {
    const float beta = static_cast<float>(ada_decays[a]), keep = 1.0f - beta;
    float *nr = new_row.data_ptr<float>() + a * rows, *rf = row_factor.data_ptr<float>() + a * rows;
    const float* rs = row_sums.data();
    if (row_features) {  // one pass (per_row = 1): the EMA, Σ of it and Σ of its inverse
      const auto sums = row_ema_sums(nr, rs, rows, beta, keep);
      row_scale.data_ptr<float>()[a] = 1.0f / static_cast<float>(sums.first / along);
      inverse_row_sums[a] = sums.second;
      continue;
    }
    for (int64_t e = 0; e < rows; ++e) nr[e] = beta * nr[e] + keep * (rs[e] / per_row);
    if (rows == along) {  // one mean (rank ≤ 2): loops the compiler vectorizes
      const float mean_row = static_cast<float>(vector_sum(nr, rows, [](vf v) { return v; }) / along);
      for (int64_t e = 0; e < rows; ++e) rf[e] = 1.0f / std::sqrt(nr[e] / mean_row);
    } else {
      std::fill(mean.begin(), mean.end(), 0.0);
      const auto batch = [&](int64_t e) { return (e / (stride * along)) * stride + e % stride; };
      for (int64_t e = 0; e < rows; ++e) mean[batch(e)] += nr[e];
      for (int64_t e = 0; e < rows; ++e) rf[e] = 1.0f / std::sqrt(nr[e] / static_cast<float>(mean[batch(e)] / along));
    }
  }
  for (int64_t a = 0; a < A; ++a) {
    const float beta = static_cast<float>(ada_decays[a]), keep = 1.0f - beta;
    float *nc = new_col.data_ptr<float>() + a * cols, *cf = col_factor.data_ptr<float>() + a * cols;
    for (int64_t e = 0; e < cols; ++e) {
      nc[e] = beta * nc[e] + keep * (col_sums[e] / per_col);
      cf[e] = 1.0f / std::sqrt(nc[e]);
    }
  }

  Inputs in = make_inputs(p, g, m, rms, fac_m, row_factor, col_factor, row_base, col_base, row_step, col_step,
                          decays, A, clip, small_clip);
  make_base(in, base_kind, base_state, base_consts);
  in.row_rsqrt = row_features;
  std::copy(row_scale.data_ptr<float>(), row_scale.data_ptr<float>() + A, in.row_scale);
  const auto sums = feature_sums(in, stats);
  const double* s = sums.data();
  const int64_t K = in.K, n_full = in.n_full;
  auto summary = torch::zeros({n_full + 2 * A + K + 4}, torch::kFloat32);
  float* out = summary.data_ptr<float>();
  for (int64_t f = 0; f < n_full; ++f) out[f] = static_cast<float>(s[f] / n);
  const float *rf = row_factor.data_ptr<float>(), *cf = col_factor.data_ptr<float>();
  for (int64_t a = 0; a < A; ++a) {
    // per-coordinate factors: mean of rsqrt(x·scale)² = mean(1/x) / scale
    out[n_full + a] = static_cast<float>(
        (row_features ? inverse_row_sums[a] / in.row_scale[a] : vector_sum(rf + a * rows, rows, square)) / rows);
    out[n_full + A + a] = static_cast<float>(vector_sum(cf + a * cols, cols, square) / cols);
  }
  for (int64_t j = 0; j < K + 3; ++j) out[n_full + 2 * A + j] = static_cast<float>(s[n_full + j] / n);
  out[n_full + 2 * A + K + 3] = nonfinite ? 1.0f : 0.0f;
  return {new_row, new_col, row_factor, col_factor, summary, row_scale};
}

// Second pass over one tensor, in place (`row_factor`, `row_scale`: plan_tensor's): p ← p - exp(exp_mult·μ)·(scale·d + adam_lr·m̂₀/(sqrt(v̂)+eps))
// and the accumulators. `weights`/`biases`: the per-parameter MLP, its first layer (F, H) over the
// features in FeatureSet.names() order with the time features already in its bias; each may be
// stacked over tensors ((T, in, out), (T, out)), of which this tensor's is number `which`; `full`,
// `row`, `col`: where the per-coordinate features, the row factors and the column factors are in
// that order. The RMS normalization (from plan_tensor's summary) is folded into the first layer, whose
// row/column part and bias become per-row and per-column tables; the hidden width is padded with
// zero units (which stay zero through ReLU) to the power of two the kernel is compiled for. The
// output layer is (H, 2) (d, μ) or (H, 1) (d alone: μ = 0).
// With `out` (a tensor shaped as p; undefined: update p in place), the update
// exp(exp_mult·μ)·(scale·d + ...) + base_coef·base goes there instead, the base direction's state is
// written, and Σ update² is returned (0 otherwise).
double apply_tensor(torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor rms, torch::Tensor fac_m,
                  torch::Tensor row_factor, torch::Tensor row_scale, torch::Tensor col_factor, torch::Tensor row_base,
                  torch::Tensor col_base,
                  int64_t row_step, int64_t col_step, std::vector<double> decays, double clip, bool small_clip,
                  torch::Tensor summary, std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases,
                  int64_t which, std::vector<int64_t> full, std::vector<int64_t> row, std::vector<int64_t> col,
                  double norm_eps, double scale, double exp_mult, double adam_lr, double bias_c1, double bias_c2,
                  double eps, int64_t base_kind, std::vector<torch::Tensor> base_state, std::vector<double> base_consts,
                  std::optional<torch::Tensor> out, double base_coef) {
  const int64_t A = row_factor.size(0), rows = row_factor.size(1), cols = col_factor.size(1);
  const int n_layers = static_cast<int>(weights.size());
  TORCH_CHECK(n_layers >= 2 && biases.size() == weights.size(), "fused: bad MLP layers");
  for (int l = 0; l < n_layers; ++l) {
    if (weights[l].dim() == 3) weights[l] = weights[l].select(0, which);  // stacked over tensors (velo)
    if (biases[l].dim() == 2) biases[l] = biases[l].select(0, which);
    weights[l] = float32(weights[l], "MLP weights");
    biases[l] = float32(biases[l], "MLP biases");
    TORCH_CHECK(weights[l].dim() == 2 && weights[l].size(1) == biases[l].numel(), "fused: bad MLP layer shapes");
  }
  const int64_t H = weights[0].size(1), HB = power_of_two_width(H);
  TORCH_CHECK(HB <= MAX_H, "fused: the kernel handles MLPs up to ", MAX_H, " hidden units");
  TORCH_CHECK(weights[0].size(0) == static_cast<int64_t>(full.size() + row.size() + col.size()) &&
                  static_cast<int64_t>(row.size()) == A && static_cast<int64_t>(col.size()) == A,
              "fused: the first layer does not match the features");
  for (int l = 1; l < n_layers; ++l)
    TORCH_CHECK(weights[l].size(0) == H && (l + 1 < n_layers ? weights[l].size(1) == H : weights[l].size(1) <= 2),
                "fused: hidden layers must be (H, H) and the output layer (H, 2) or (H, 1)");
  const int64_t n_full = static_cast<int64_t>(full.size());
  const float* ms = summary.data_ptr<float>();
  const float* w0 = weights[0].data_ptr<float>();
  const float* b0 = biases[0].data_ptr<float>();
  const auto normalizer = [&](int64_t at) { return 1.0f / std::sqrt(ms[at] + static_cast<float>(norm_eps)); };

  // Tables (A + HB, rows|cols): the A factors, then each hidden unit's row (+ bias) / column part;
  // with per-coordinate row factors (row_features) the row table is the factors alone and the bias
  // goes with the column part.
  const bool row_features = per_coordinate_rows(rows, p.numel(), row_step);
  TORCH_CHECK(row_scale.numel() == A, "fused: bad row scales");
  auto rowtab = row_features ? row_factor.contiguous() : torch::zeros({A + HB, rows}, torch::kFloat32);
  auto coltab = torch::zeros({A + HB, cols}, torch::kFloat32);
  const float* no_bias = nullptr;
  std::vector<std::tuple<torch::Tensor, torch::Tensor, const std::vector<int64_t>*, int64_t, int64_t, const float*>> tables;
  if (!row_features) tables.emplace_back(rowtab, row_factor, &row, rows, n_full, b0);
  tables.emplace_back(coltab, col_factor, &col, cols, n_full + A, row_features ? b0 : no_bias);
  for (auto [tab, factor, index, count, offset, bias] : tables) {
    float* t = tab.data_ptr<float>();
    const float* f = factor.data_ptr<float>();
    std::copy(f, f + A * count, t);
    for (int64_t j = 0; j < H; ++j) {
      float* part = t + (A + j) * count;
      for (int64_t e = 0; e < count; ++e) part[e] = bias ? bias[j] : 0.0f;
      for (int64_t a = 0; a < A; ++a) {
        const float w = w0[(*index)[a] * H + j] * normalizer(offset + a);
        for (int64_t e = 0; e < count; ++e) part[e] += w * f[a * count + e];
      }
    }
  }

  Inputs in = make_inputs(p, g, m, rms, fac_m, rowtab, coltab, row_base, col_base, row_step, col_step, decays, A,
                          clip, small_clip);
  make_base(in, base_kind, base_state, base_consts);
  if (out.has_value()) {
    TORCH_CHECK(out->is_contiguous() && out->scalar_type() == torch::kFloat32 && out->numel() == p.numel(),
                "fused: the output buffer must be contiguous float32, shaped as p");
    in.out = out->data_ptr<float>();
  }
  TORCH_CHECK(in.out != nullptr || in.base == BASE_NONE, "fused: a base direction needs an output buffer");
  in.row_features = in.row_rsqrt = row_features;
  for (int64_t a = 0; a < A; ++a) in.row_scale[a] = row_scale.data_ptr<float>()[a];
  TORCH_CHECK(in.n_full == n_full, "fused: the feature indices do not match the decays");
  Mlp net;
  net.HB = static_cast<int>(HB);
  net.w0.assign(N_SLOTS * HB, vf{});
  for (int s = 0; s < N_SLOTS; ++s) {
    const int f = in.feature_of[s];
    if (f < 0) continue;
    net.active[net.n_active++] = s;
    const float norm = normalizer(f);
    for (int64_t j = 0; j < H; ++j) net.w0[s * HB + j] = splat(w0[full[f] * H + j] * norm);
  }
  for (int a = 0; row_features && a < A; ++a) {
    const int s = S_ROW + a;
    net.active[net.n_active++] = s;
    const float norm = normalizer(n_full + a);
    for (int64_t j = 0; j < H; ++j) net.w0[s * HB + j] = splat(w0[row[a] * H + j] * norm);
  }
  // A layer (H, out) + (out,) appended to `to` as (HB, out_padded) + (out_padded,), zero-padded.
  const auto append_padded = [&](std::vector<vf>& to, const torch::Tensor& w, const torch::Tensor& b, int64_t out,
                                 int64_t out_padded) {
    const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
    const size_t start = to.size();
    to.resize(start + HB * out_padded + out_padded, vf{});
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < out; ++j) to[start + i * out_padded + j] = splat(wp[i * out + j]);
    for (int64_t j = 0; j < out; ++j) to[start + HB * out_padded + j] = splat(bp[j]);
  };
  for (int l = 1; l + 1 < n_layers; ++l) {
    append_padded(net.hidden, weights[l], biases[l], H, HB);
    ++net.n_hidden;
  }
  append_padded(net.out, weights.back(), biases.back(), weights.back().size(1), 2);
  net.scale = static_cast<float>(scale);
  net.exp_mult = static_cast<float>(exp_mult);
  net.adam_lr = static_cast<float>(adam_lr);
  net.bias_c1 = static_cast<float>(bias_c1);
  net.bias_c2 = static_cast<float>(bias_c2);
  net.eps = static_cast<float>(eps);
  net.base_coef = static_cast<float>(base_coef);
  return apply_update(in, net);
}

// The update's exp on a float32 tensor, so tests can check it against torch.exp directly (through
// the update its error would hide under the update's tolerance).
torch::Tensor update_exp(torch::Tensor x) {
  x = float32(x, "x");
  auto out = torch::empty_like(x);
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t e = 0; e < x.numel(); e += GROUP) {
    const int64_t len = std::min<int64_t>(GROUP, x.numel() - e);
    store_group(o + e, exponential_near_zero(load_group(in + e, len)), len);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("plan_tensor", &plan_tensor, "First pass: Adafactor factors and feature statistics of one tensor");
  module.def("apply_tensor", &apply_tensor, "Second pass: one fused per-parameter-MLP step of one tensor, in place");
  module.def("update_exp", &update_exp, "The kernel's exp (for tests)");
  bind_velo_tensor_level(module);
}
