// Fused CPU selective scan (Mamba-1) for training: selective_scan_fwd / selective_scan_bwd.
//
// Batch-first inputs delta, x, z [B, T, E], A [E, N], B, C [B, T, N], h0 [B, E, N]; optionally
//   delta' = softplus(delta + delta_bias)                    (delta_softplus; the bias alone without it)
//   h_t    = exp(delta'_t A) h_{t-1} + u_t B_t,   u = delta' x (mul_delta) or u = x
//   y_t    = (C_t . h_t + D x_t) * SiLU(z_t)                 (D and z optional)
// which is the whole Mamba-1 mixer between dt_proj and out_proj in one pass (no [B, T, E, N] tensor).
//
// Layout: the work items are (batch row, block of V = 16 channels); the 16 channels are the vector lanes,
// so the N state rows of an item are N vectors kept in registers, the readout C_t . h_t is a vertical sum
// and no horizontal reduction is needed on the per-channel outputs.  exp is a polynomial exp2 (~1 ulp).
// The forward optionally saves the state every K steps ("checkpoints", B * T/K * E * N floats in the items'
// lane layout); the backward recomputes each K-step chunk from its checkpoint into a small per-thread
// buffer (h_t and exp(delta' A)), then runs the reverse recurrence through it.  The reductions over
// channels (dB, dC) and over batch and time (dA, dD, d delta_bias) use per-lane and per-thread partial sums.
//
// float32, CPU; inputs may be strided views (last dimension contiguous), as split / chunk produce them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#ifndef LRAM_NS  // the library namespace (a standalone development build registers under another name)
#define LRAM_NS lram
#endif

namespace {

constexpr int64_t V = 16;  // channels per work item = vector lanes
typedef float vf __attribute__((vector_size(V * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(V * sizeof(int32_t))));
constexpr float LOG2E_F = 1.4426950408889634f;

inline vf splat(float a) { return vf{} + a; }
inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline vf load_n(const float* p, int64_t n) {  // the first n lanes, zeros after
  if (n == V) return load(p);
  vf v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
inline void store_n(float* p, vf v, int64_t n) {
  if (n == V)
    std::memcpy(p, &v, sizeof(vf));
  else
    std::memcpy(p, &v, n * sizeof(float));
}
inline float hsum(vf v) {
  float s = 0.0f;
  for (int64_t l = 0; l < V; ++l) s += v[l];
  return s;
}

// out[n] = hsum(v[n]) for 16 vectors, as a tree of pairwise lane shuffles and adds (15 adds instead of 240):
// at each level a vector holds m of the sums, each spread over w lanes, and two such vectors are folded
// into one holding 2m sums over w/2 lanes.
inline vf lane_sums(const vf* v) {
#ifdef __AVX512F__
  __m512 cur[V];
  for (int64_t n = 0; n < V; ++n) cur[n] = (__m512)v[n];
  for (int64_t w = V, count = V; w > 1; w /= 2, count /= 2) {
    alignas(64) int32_t lo[V], hi[V];
    for (int64_t p = 0; p < V; ++p) {
      const int64_t o = (p % (V / 2)) / (w / 2), q = p % (w / 2);
      lo[p] = static_cast<int32_t>((p >= V / 2 ? V : 0) + o * w + q);
      hi[p] = lo[p] + static_cast<int32_t>(w / 2);
    }
    const __m512i ilo = _mm512_load_si512(lo), ihi = _mm512_load_si512(hi);
    for (int64_t i = 0; i < count / 2; ++i)
      cur[i] = _mm512_add_ps(_mm512_permutex2var_ps(cur[2 * i], ilo, cur[2 * i + 1]),
                             _mm512_permutex2var_ps(cur[2 * i], ihi, cur[2 * i + 1]));
  }
  return (vf)cur[0];
#else
  vf out;
  for (int64_t n = 0; n < V; ++n) out[n] = hsum(v[n]);
  return out;
#endif
}

// 2^x: split x = k + f (k the nearest integer, |f| <= 1/2), 2^f by a degree-6 polynomial (Chebyshev fit,
// relative error < 1.1e-7 in float), times 2^k.  AVX-512 has both steps as instructions (roundscale,
// scalef: exact, 0 below the float range); elsewhere the exponent bits are built (x clamped to +-127).
__attribute__((always_inline)) inline vf exp2_poly(vf f) {
  vf p = splat(1.546974090160802e-04f);
  p = p * f + 1.3400441966950893e-03f;
  p = p * f + 9.61802527308464e-03f;
  p = p * f + 5.550327152013779e-02f;
  p = p * f + 2.4022650718688965e-01f;
  p = p * f + 6.931471824645996e-01f;
  return p * f + 1.0f;
}
#ifdef __AVX512F__
__attribute__((always_inline)) inline vf exp2v(vf x) {
  const __m512 r = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (vf)_mm512_scalef_ps((__m512)exp2_poly(x - (vf)r), r);
}
#else
__attribute__((always_inline)) inline vf exp2v(vf x) {
  x = x < splat(-127.0f) ? splat(-127.0f) : x;
  x = x > splat(127.0f) ? splat(127.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vf r = (x + magic) - magic;
  const vi bits = (__builtin_convertvector(r, vi) + 127) << 23;  // 2^r (0 for r = -127)
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  return exp2_poly(x - r) * scale;
}
#endif

// 1 / d: the 14-bit reciprocal estimate and one Newton step on AVX-512 (relative error ~1e-7, a fraction of
// a division's cost), a division elsewhere.
__attribute__((always_inline)) inline vf recip(vf d) {
#ifdef __AVX512F__
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

// softplus(v) = max(v, 0) + log1p(exp(-|v|)) and sigmoid(v) (its derivative), to float precision;
// log1p(w) = 2 atanh(w / (2 + w)) by its series (w in (0, 1], so the argument is at most 1/3).
__attribute__((always_inline)) inline vf softplus_v(vf v, vf* sig) {
  const vf a = v < splat(0.0f) ? -v : v;
  const vf w = exp2v(a * -LOG2E_F);
  const vf s = w * recip(w + 2.0f), s2 = s * s;
  vf p = splat(1.0f / 15.0f);
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const vf inv = recip(w + 1.0f);
  *sig = v < splat(0.0f) ? w * inv : inv;
  return (v < splat(0.0f) ? splat(0.0f) : v) + 2.0f * s * p;
}

__attribute__((always_inline)) inline vf sigmoid_v(vf v) {
  const vf a = v < splat(0.0f) ? -v : v;
  const vf w = exp2v(a * -LOG2E_F);
  const vf inv = recip(w + 1.0f);
  return v < splat(0.0f) ? w * inv : inv;
}

// N vectors (the state rows of one item): a local array when N is a compile-time constant (registers),
// a heap buffer otherwise.
template <int NT>
struct Rows {
  vf a[NT];
  explicit Rows(int64_t) {}
  vf& operator[](int64_t i) { return a[i]; }
};
template <>
struct Rows<0> {
  std::vector<vf> a;
  explicit Rows(int64_t n) : a(n) {}
  vf& operator[](int64_t i) { return a[i]; }
};

// rows[n][l] = src[l * N + n] for the nv valid lanes (a [nv, N] block of a [.., E, N] state), zeros elsewhere,
// and the inverse.  Through a separate buffer: element access on the state arrays themselves would keep
// them in memory instead of registers.
template <typename R>
void load_state(R& rows, const float* src, int64_t N, int64_t nv) {
  std::vector<vf> tmp(N, vf{});
  for (int64_t l = 0; l < nv; ++l)
    for (int64_t n = 0; n < N; ++n) tmp[n][l] = src[l * N + n];
  for (int64_t n = 0; n < N; ++n) rows[n] = tmp[n];
}
template <typename R>
void store_state(R& rows, float* dst, int64_t N, int64_t nv) {
  std::vector<vf> tmp(N);
  for (int64_t n = 0; n < N; ++n) tmp[n] = rows[n];
  for (int64_t l = 0; l < nv; ++l)
    for (int64_t n = 0; n < N; ++n) dst[l * N + n] = tmp[n][l];
}

// A [B, T, F] float tensor view with a contiguous last dimension.
struct View {
  const float* p = nullptr;
  int64_t s0 = 0, s1 = 0;
  const float* at(int64_t b, int64_t t) const { return p + b * s0 + t * s1; }
};
View view(const at::Tensor& t) {
  if (!t.defined()) return {};
  return {t.data_ptr<float>(), t.stride(0), t.stride(1)};
}

// Rows of a [B, T, E] tensor are E floats apart (a page for E = 1024): the hardware prefetchers do not
// follow an item's accesses across pages, so the kernels prefetch the rows PF steps ahead themselves, into
// L2 (the rows of one item map to a single L1 set when E * 4 is a multiple of 4 KiB).
constexpr int64_t PF = 8;
constexpr int64_t S = 8;  // forward: steps whose per-channel terms (softplus, gate) are computed as one batch
// (always inlined: GCC deems a function holding only prefetches free of side effects and drops its calls)
__attribute__((always_inline)) inline void prefetch(const float* p) { __builtin_prefetch(p, 0, 2); }
__attribute__((always_inline)) inline void prefetch_w(const float* p) { __builtin_prefetch(p, 1, 2); }

struct Scan {
  int64_t Bsz, T, E, N, K, nEB, nck;
  View delta, x, z, Bm, Cm;
  const float* h0 = nullptr;  // [B, E, N]
  std::vector<vf> A, A2, D, bias;  // A, A * log2(e): [nEB, N] (lanes: channels); D, bias: [nEB] (zero padded)
  bool has_D, has_z, has_bias, softplus, mul_delta;

  // delta' and sigmoid(delta + bias) (the softplus derivative) for lanes e0.. of row (b, t)
  vf delta_at(int64_t b, int64_t t, int64_t e0, int64_t nv, vf* sig) const {
    vf d = load_n(delta.at(b, t) + e0, nv);
    if (has_bias) d += bias[e0 / V];
    if (softplus) return softplus_v(d, sig);
    *sig = splat(1.0f);
    return d;
  }
  __attribute__((always_inline)) void prefetch_inputs(int64_t b, int64_t t, int64_t e0) const {
    prefetch(delta.at(b, t) + e0);
    prefetch(x.at(b, t) + e0);
    if (has_z) prefetch(z.at(b, t) + e0);
  }
};

// ------------------------------------------------------------------------------------------- forward
template <int NT>
void forward_item(const Scan& s, int64_t b, int64_t eb, float* y, float* h_last, float* ck) {
  const int64_t N = NT ? NT : s.N, E = s.E, T = s.T, e0 = eb * V, nv = std::min(V, E - e0);
  Rows<NT> h(N);
  for (int64_t n = 0; n < N; ++n) h[n] = vf{};
  if (s.h0) load_state(h, s.h0 + (b * E + e0) * N, N, nv);
  const vf* A2 = s.A2.data() + eb * N;
  const vf Dv = s.D[eb];
  for (int64_t t = 0; t < std::min(PF, T); ++t) s.prefetch_inputs(b, t, e0);
  for (int64_t t0 = 0, next_ck = 0; t0 < T; t0 += S) {
    const int64_t ns = std::min(S, T - t0);
    // the per-channel terms of S steps first: independent work, overlapped by the CPU
    vf DVs[S], UVs[S], SKs[S], GTs[S];  // delta', u, D x, SiLU(z)
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t t = t0 + j;
      if (t + PF < T) {
        s.prefetch_inputs(b, t + PF, e0);
        prefetch_w(y + (b * T + t + PF) * E + e0);
      }
      vf sig;
      const vf dv = s.delta_at(b, t, e0, nv, &sig);
      const vf xv = load_n(s.x.at(b, t) + e0, nv);
      DVs[j] = dv;
      UVs[j] = s.mul_delta ? dv * xv : xv;
      SKs[j] = Dv * xv;
      if (s.has_z) {
        const vf zv = load_n(s.z.at(b, t) + e0, nv);
        GTs[j] = zv * sigmoid_v(zv);
      } else {
        GTs[j] = splat(1.0f);
      }
    }
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t t = t0 + j;
      if (ck && t == next_ck) {
        vf* dst = reinterpret_cast<vf*>(ck) + ((b * s.nEB + eb) * s.nck + t / s.K) * N;
        for (int64_t n = 0; n < N; ++n) dst[n] = h[n];
        next_ck += s.K;
      }
      const vf dv = DVs[j], uv = UVs[j];
      const float* Bt = s.Bm.at(b, t);
      const float* Ct = s.Cm.at(b, t);
      vf yp[4] = {};  // partial sums over n: four short dependency chains instead of one of length N
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        h[n] = exp2v(dv * A2[n]) * h[n] + uv * Bt[n];
        yp[n & 3] += Ct[n] * h[n];
      }
      const vf yv = (yp[0] + yp[1]) + (yp[2] + yp[3]);
      store_n(y + (b * T + t) * E + e0, (yv + SKs[j]) * GTs[j], nv);
    }
  }
  store_state(h, h_last + (b * E + e0) * N, N, nv);
}

// ------------------------------------------------------------------------------------------ backward
struct Grads {
  View gy;
  const float* gh_last = nullptr;  // [B, E, N] or null
  float *g_delta, *g_x, *g_z, *g_h0;  // [B, T, E] (g_z may be null), [B, E, N] (may be null)
  const float* ck;
};

// Per-thread buffers and partial sums of the backward.
struct Worker {
  std::vector<vf> H, DA, acc_B, acc_C;       // [K, N] h_t and exp(delta' A) of a chunk; [T, N] per-lane dB, dC
  std::vector<vf> DV, SIG, XV, UV, GYR, GZ;  // [K] per step of a chunk
  std::vector<vf> gA;                        // [nEB, N]
  std::vector<vf> gD, gbias;                 // [nEB]
  std::vector<float> gB, gC;                 // [B, T, N]
  Worker(const Scan& s)
      : H(s.K * s.N), DA(s.K * s.N), acc_B(s.T * s.N), acc_C(s.T * s.N), DV(s.K), SIG(s.K), XV(s.K), UV(s.K),
        GYR(s.K), GZ(s.K), gA(s.nEB * s.N), gD(s.nEB), gbias(s.nEB), gB(s.Bsz * s.T * s.N), gC(s.Bsz * s.T * s.N) {}
  // the per-lane dB, dC sums of batch row b into the partial sums, and reset them
  void flush(const Scan& s, int64_t b) {
    float* pB = gB.data() + b * s.T * s.N;
    float* pC = gC.data() + b * s.T * s.N;
    if (s.N == V) {
      for (int64_t t = 0; t < s.T; ++t) {
        store_n(pB + t * V, load(pB + t * V) + lane_sums(acc_B.data() + t * V), V);
        store_n(pC + t * V, load(pC + t * V) + lane_sums(acc_C.data() + t * V), V);
      }
    } else {
      for (int64_t i = 0; i < s.T * s.N; ++i) {
        pB[i] += hsum(acc_B[i]);
        pC[i] += hsum(acc_C[i]);
      }
    }
    std::fill(acc_B.begin(), acc_B.end(), vf{});
    std::fill(acc_C.begin(), acc_C.end(), vf{});
  }
};

template <int NT>
void backward_item(const Scan& s, const Grads& g, Worker& w, int64_t b, int64_t eb) {
  const int64_t N = NT ? NT : s.N, E = s.E, T = s.T, K = s.K, e0 = eb * V, nv = std::min(V, E - e0);
  Rows<NT> G(N);  // d loss / d h_t, carried backwards
  for (int64_t n = 0; n < N; ++n) G[n] = vf{};
  if (g.gh_last) load_state(G, g.gh_last + (b * E + e0) * N, N, nv);
  const vf* A = s.A.data() + eb * N;
  const vf* A2 = s.A2.data() + eb * N;
  vf* gA = w.gA.data() + eb * N;  // accumulated in place (L1)
  const vf Dv = s.D[eb];
  vf gD = {}, gbias = {};
  vf* H = w.H.data();
  vf* DA = w.DA.data();
  const int64_t last0 = (s.nck - 1) * K;
  for (int64_t t = last0; t < std::min(last0 + PF, T); ++t) {
    s.prefetch_inputs(b, t, e0);
    prefetch(g.gy.at(b, t) + e0);
  }
  for (int64_t c = s.nck - 1; c >= 0; --c) {
    const int64_t t0 = c * K, nt = std::min(K, T - t0);
    const vf* start = reinterpret_cast<const vf*>(g.ck) + ((b * s.nEB + eb) * s.nck + c) * N;
    // recompute the chunk's states from its checkpoint (prefetching what the reverse pass reads)
    {
      Rows<NT> h(N);
      for (int64_t n = 0; n < N; ++n) h[n] = start[n];
      for (int64_t j = 0; j < nt; ++j) {  // the per-channel terms of the chunk's steps first (independent)
        const int64_t t = t0 + j;
        if (j + PF < nt) {
          s.prefetch_inputs(b, t + PF, e0);
          prefetch(g.gy.at(b, t + PF) + e0);
        }
        prefetch_w(g.g_delta + (b * T + t) * E + e0);
        prefetch_w(g.g_x + (b * T + t) * E + e0);
        if (g.g_z) prefetch_w(g.g_z + (b * T + t) * E + e0);
        const vf dv = s.delta_at(b, t, e0, nv, &w.SIG[j]);
        const vf xv = load_n(s.x.at(b, t) + e0, nv);
        w.DV[j] = dv;
        w.XV[j] = xv;
        w.UV[j] = s.mul_delta ? dv * xv : xv;
        const vf gyv = load_n(g.gy.at(b, t) + e0, nv);
        if (s.has_z) {  // y = yraw * SiLU(z): d/d yraw and d/dz = yraw * GZ
          const vf zv = load_n(s.z.at(b, t) + e0, nv);
          const vf sz = sigmoid_v(zv);
          w.GYR[j] = gyv * zv * sz;
          w.GZ[j] = gyv * sz * (1.0f + zv * (1.0f - sz));
        } else {
          w.GYR[j] = gyv;
        }
      }
      for (int64_t j = 0; j < nt; ++j) {
        const vf dv = w.DV[j], uv = w.UV[j];
        const float* Bt = s.Bm.at(b, t0 + j);
        vf* Hj = H + j * N;
        vf* DAj = DA + j * N;
#pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
          const vf dA = exp2v(dv * A2[n]);
          h[n] = dA * h[n] + uv * Bt[n];
          Hj[n] = h[n];
          DAj[n] = dA;
        }
      }
    }
    // the reverse recurrence through the chunk (prefetching the previous chunk's inputs and checkpoint)
    if (c > 0)
      for (int64_t n = 0; n < N; ++n) prefetch(reinterpret_cast<const float*>(start - N + n));
    for (int64_t j = nt - 1; j >= 0; --j) {
      const int64_t t = t0 + j;
      if (t0 > 0 && j < PF) {
        s.prefetch_inputs(b, t0 - K + j, e0);
        prefetch(g.gy.at(b, t0 - K + j) + e0);
      }
      const vf dv = w.DV[j], xv = w.XV[j], uv = w.UV[j], gyr = w.GYR[j];  // gyr: d loss / d (C . h + D x)
      const float* Bt = s.Bm.at(b, t);
      const float* Ct = s.Cm.at(b, t);
      const vf* Hj = H + j * N;
      const vf* Hp = j ? H + (j - 1) * N : start;
      const vf* DAj = DA + j * N;
      vf* accB = w.acc_B.data() + t * N;
      vf* accC = w.acc_C.data() + t * N;
      vf yp[2] = {}, gup[2] = {}, gdp[2] = {};  // partial sums over n (shorter dependency chains)
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        const vf hj = Hj[n];
        yp[n & 1] += Ct[n] * hj;
        accC[n] += gyr * hj;
        const vf Gn = G[n] + gyr * Ct[n];
        gup[n & 1] += Bt[n] * Gn;
        accB[n] += uv * Gn;
        const vf q = Gn * Hp[n] * DAj[n];  // d loss / d (delta' A)
        gdp[n & 1] += q * A[n];
        gA[n] += q * dv;
        G[n] = DAj[n] * Gn;
      }
      vf yraw = yp[0] + yp[1], gu = gup[0] + gup[1], gd = gdp[0] + gdp[1];
      if (s.has_D) {
        yraw += Dv * xv;
        gD += gyr * xv;
      }
      if (s.has_z) store_n(g.g_z + (b * T + t) * E + e0, yraw * w.GZ[j], nv);
      vf gx = gu;
      if (s.mul_delta) {
        gx = gu * dv;
        gd += gu * xv;
      }
      if (s.has_D) gx += gyr * Dv;
      gd *= w.SIG[j];
      gbias += gd;
      store_n(g.g_delta + (b * T + t) * E + e0, gd, nv);
      store_n(g.g_x + (b * T + t) * E + e0, gx, nv);
    }
  }
  if (g.g_h0) store_state(G, g.g_h0 + (b * E + e0) * N, N, nv);
  w.gD[eb] += gD;
  w.gbias[eb] += gbias;
}

// ------------------------------------------------------------------------------------------ the ops
const char* const FWD = "selective_scan_fwd";
const char* const BWD = "selective_scan_bwd";

void check_tensor(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes) {
  TORCH_CHECK(t.defined(), "lram::", op, ": argument '", name, "' is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), "lram::", op, ": argument '", name,
              "' must be a float32 CPU tensor, got ", t.toString());
  TORCH_CHECK(t.sizes().equals(sizes), "lram::", op, ": argument '", name, "' must have shape ", sizes, ", got ",
              t.sizes());
}

// a defined optional argument, checked, with a contiguous last dimension (or undefined)
at::Tensor optional_arg(const char* op, const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef sizes) {
  if (!t.has_value() || !t->defined()) return {};
  check_tensor(op, name, *t, sizes);
  return t->dim() > 0 && t->stride(-1) != 1 ? t->contiguous() : *t;
}

at::Tensor lastdim_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// Checks the inputs and prepares the shared description of a scan; keeps the (possibly copied) tensors alive
// in `keep`.
Scan make_scan(const char* op, const at::Tensor& delta, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bm,
               const at::Tensor& Cm, const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& D,
               const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
               bool mul_delta, int64_t K, std::vector<at::Tensor>& keep) {
  TORCH_CHECK(delta.defined() && delta.dim() == 3, "lram::", op, ": argument 'delta' must be a [B, T, E] tensor, got ",
              delta.defined() ? delta.sizes() : at::IntArrayRef{});
  TORCH_CHECK(A.defined() && A.dim() == 2, "lram::", op, ": argument 'A' must be an [E, N] tensor");
  const int64_t Bsz = delta.size(0), T = delta.size(1), E = delta.size(2), N = A.size(1);
  TORCH_CHECK(K >= 1, "lram::", op, ": argument 'checkpoint_every' must be >= 1, got ", K);
  check_tensor(op, "delta", delta, {Bsz, T, E});
  check_tensor(op, "x", x, {Bsz, T, E});
  check_tensor(op, "A", A, {E, N});
  check_tensor(op, "B", Bm, {Bsz, T, N});
  check_tensor(op, "C", Cm, {Bsz, T, N});
  Scan s;
  s.Bsz = Bsz, s.T = T, s.E = E, s.N = N, s.K = K;
  s.nEB = (E + V - 1) / V;
  s.nck = (T + K - 1) / K;
  keep = {lastdim_contiguous(delta), lastdim_contiguous(x), lastdim_contiguous(Bm), lastdim_contiguous(Cm),
          optional_arg(op, "h0", h0, {Bsz, E, N}), optional_arg(op, "D", D, {E}), optional_arg(op, "z", z, {Bsz, T, E}),
          optional_arg(op, "delta_bias", delta_bias, {E})};
  if (keep[4].defined()) keep[4] = keep[4].contiguous();
  s.delta = view(keep[0]), s.x = view(keep[1]), s.Bm = view(keep[2]), s.Cm = view(keep[3]), s.z = view(keep[6]);
  s.h0 = keep[4].defined() ? keep[4].data_ptr<float>() : nullptr;
  s.has_D = keep[5].defined(), s.has_z = keep[6].defined(), s.has_bias = keep[7].defined();
  s.softplus = delta_softplus, s.mul_delta = mul_delta;
  const at::Tensor Ac = A.contiguous();
  const float* Ap = Ac.data_ptr<float>();
  s.A.assign(s.nEB * N, vf{});
  s.A2.assign(s.nEB * N, vf{});
  s.D.assign(s.nEB, vf{});
  s.bias.assign(s.nEB, vf{});
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t n = 0; n < N; ++n) {
      s.A[(e / V) * N + n][e % V] = Ap[e * N + n];
      s.A2[(e / V) * N + n][e % V] = Ap[e * N + n] * LOG2E_F;
    }
    if (s.has_D) s.D[e / V][e % V] = keep[5].data_ptr<float>()[e];
    if (s.has_bias) s.bias[e / V][e % V] = keep[7].data_ptr<float>()[e];
  }
  return s;
}

template <typename F>
void dispatch_N(int64_t N, F&& f) {
  switch (N) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// y [B, T, E], h_T [B, E, N] and, when checkpoint_every > 0, the state before every checkpoint_every-th step
// (for the backward: [B, ceil(E / 16), ceil(T / checkpoint_every), N * 16], channels in the lanes; an empty
// tensor otherwise).
std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& delta, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
    const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, bool mul_delta, int64_t checkpoint_every) {
  TORCH_CHECK(checkpoint_every >= 0, "lram::", FWD, ": argument 'checkpoint_every' must be >= 0, got ",
              checkpoint_every);
  std::vector<at::Tensor> keep;
  const int64_t K = checkpoint_every > 0 ? checkpoint_every : std::max<int64_t>(delta.dim() == 3 ? delta.size(1) : 1, 1);
  const Scan s = make_scan(FWD, delta, x, A, Bm, Cm, h0, D, z, delta_bias, delta_softplus, mul_delta, K, keep);
  const auto opts = delta.options();
  at::Tensor y = at::empty({s.Bsz, s.T, s.E}, opts);
  at::Tensor h_last = at::empty({s.Bsz, s.E, s.N}, opts);
  at::Tensor ck = at::empty({s.Bsz, s.nEB, checkpoint_every > 0 ? s.nck : 0, s.N * V}, opts);
  float* yp = y.data_ptr<float>();
  float* hp = h_last.data_ptr<float>();
  float* cp = checkpoint_every > 0 ? ck.data_ptr<float>() : nullptr;
  const int64_t items = s.Bsz * s.nEB;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(s.T * s.N, 1));
  dispatch_N(s.N, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) forward_item<NT>(s, i / s.nEB, i % s.nEB, yp, hp, cp);
    });
  });
  return {y, h_last, ck};
}

// Gradients of selective_scan_fwd's outputs: (delta, x, A, B, C, h0, D, z, delta_bias); those of absent
// optional inputs are undefined (None).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_h_last, const at::Tensor& delta,
                   const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                   const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& D,
                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                   bool mul_delta, const at::Tensor& checkpoints, int64_t checkpoint_every) {
  std::vector<at::Tensor> keep;
  const Scan s =
      make_scan(BWD, delta, x, A, Bm, Cm, h0, D, z, delta_bias, delta_softplus, mul_delta, checkpoint_every, keep);
  check_tensor(BWD, "grad_y", grad_y, {s.Bsz, s.T, s.E});
  check_tensor(BWD, "checkpoints", checkpoints, {s.Bsz, s.nEB, s.nck, s.N * V});
  const at::Tensor gy = lastdim_contiguous(grad_y);
  at::Tensor ck = checkpoints.contiguous();  // read as vectors: 64-byte aligned (a copy if a view is not)
  if (reinterpret_cast<std::uintptr_t>(ck.data_ptr<float>()) % alignof(vf) != 0) ck = ck.clone();
  const at::Tensor gh = optional_arg(BWD, "grad_h_last", grad_h_last, {s.Bsz, s.E, s.N});
  const at::Tensor ghc = gh.defined() ? gh.contiguous() : gh;
  const auto opts = delta.options();
  at::Tensor g_delta = at::empty({s.Bsz, s.T, s.E}, opts), g_x = at::empty({s.Bsz, s.T, s.E}, opts);
  at::Tensor g_z = s.has_z ? at::empty({s.Bsz, s.T, s.E}, opts) : at::Tensor();
  at::Tensor g_h0 = s.h0 ? at::empty({s.Bsz, s.E, s.N}, opts) : at::Tensor();
  Grads g;
  g.gy = view(gy);
  g.gh_last = ghc.defined() ? ghc.data_ptr<float>() : nullptr;
  g.g_delta = g_delta.data_ptr<float>(), g.g_x = g_x.data_ptr<float>();
  g.g_z = s.has_z ? g_z.data_ptr<float>() : nullptr;
  g.g_h0 = s.h0 ? g_h0.data_ptr<float>() : nullptr;
  g.ck = ck.data_ptr<float>();
  // a fixed split of the items into P parts, one set of partial sums each (the result depends on P only)
  const int64_t items = s.Bsz * s.nEB;
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  std::vector<std::unique_ptr<Worker>> workers(P);
  dispatch_N(s.N, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        workers[p] = std::make_unique<Worker>(s);
        Worker& w = *workers[p];
        int64_t cur = -1;
        for (int64_t i = p * items / P; i < (p + 1) * items / P; ++i) {
          const int64_t b = i / s.nEB;
          if (b != cur) {
            if (cur >= 0) w.flush(s, cur);
            cur = b;
          }
          backward_item<NT>(s, g, w, b, i % s.nEB);
        }
        if (cur >= 0) w.flush(s, cur);
      }
    });
  });
  // reduce the partial sums
  at::Tensor g_A = at::zeros({s.E, s.N}, opts), g_B = at::zeros({s.Bsz, s.T, s.N}, opts),
             g_C = at::zeros({s.Bsz, s.T, s.N}, opts);
  at::Tensor g_D = s.has_D ? at::zeros({s.E}, opts) : at::Tensor();
  at::Tensor g_bias = s.has_bias ? at::zeros({s.E}, opts) : at::Tensor();
  float* gA = g_A.data_ptr<float>();
  float* gB = g_B.data_ptr<float>();
  float* gC = g_C.data_ptr<float>();
  for (const auto& wp : workers) {
    const Worker& w = *wp;
    for (int64_t e = 0; e < s.E; ++e) {
      for (int64_t n = 0; n < s.N; ++n) gA[e * s.N + n] += w.gA[(e / V) * s.N + n][e % V];
      if (s.has_D) g_D.data_ptr<float>()[e] += w.gD[e / V][e % V];
      if (s.has_bias) g_bias.data_ptr<float>()[e] += w.gbias[e / V][e % V];
    }
    for (int64_t i = 0; i < s.Bsz * s.T * s.N; ++i) {
      gB[i] += w.gB[i];
      gC[i] += w.gC[i];
    }
  }
  return {g_delta, g_x, g_A, g_B, g_C, g_h0, g_D, g_z, g_bias};
}

// ------------------------------------------------------------------------------------------ RMSNorm
// y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) per row of x [..., D]; the backward in one pass
// per row (PyTorch's composite rms_norm backward is ~10 ops over the activations).
const char* const RMS_FWD = "rms_norm_fwd";
const char* const RMS_BWD = "rms_norm_bwd";

void check_rows(const char* op, const char* name, const at::Tensor& t, int64_t D) {
  TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() >= 1 && t.size(-1) == D,
              "lram::", op, ": argument '", name, "' must be a float32 CPU tensor [..., ", D, "], got ",
              t.defined() ? t.toString() : std::string("undefined"), " ", t.defined() ? t.sizes() : at::IntArrayRef{});
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x_in, const at::Tensor& weight, double eps_d) {
  TORCH_CHECK(weight.defined() && weight.dim() == 1, "lram::", RMS_FWD, ": argument 'weight' must be a [D] tensor");
  const int64_t D = weight.size(0);
  check_rows(RMS_FWD, "weight", weight, D);
  check_rows(RMS_FWD, "x", x_in, D);
  const at::Tensor x = x_in.contiguous(), w = weight.contiguous();
  const int64_t R = x.numel() / std::max<int64_t>(D, 1);
  at::Tensor y = at::empty_like(x), rstd = at::empty({R}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();
  const float eps = static_cast<float>(eps_d);
  at::parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
      const float rs = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
      rp[r] = rs;
      float* yr = yp + r * D;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * rs * wp[j];
    }
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& weight,
                                                const at::Tensor& rstd_in) {
  TORCH_CHECK(weight.defined() && weight.dim() == 1, "lram::", RMS_BWD, ": argument 'weight' must be a [D] tensor");
  const int64_t D = weight.size(0);
  check_rows(RMS_BWD, "weight", weight, D);
  check_rows(RMS_BWD, "x", x_in, D);
  check_rows(RMS_BWD, "grad_y", grad_y, D);
  TORCH_CHECK(grad_y.sizes().equals(x_in.sizes()), "lram::", RMS_BWD, ": argument 'grad_y' must have x's shape ",
              x_in.sizes(), ", got ", grad_y.sizes());
  const int64_t R = x_in.numel() / std::max<int64_t>(D, 1);
  TORCH_CHECK(rstd_in.defined() && rstd_in.scalar_type() == at::kFloat && rstd_in.numel() == R, "lram::", RMS_BWD,
              ": argument 'rstd' must be a float32 tensor of ", R, " elements");
  const at::Tensor x = x_in.contiguous(), gy = grad_y.contiguous(), w = weight.contiguous(), rstd = rstd_in.contiguous();
  at::Tensor gx = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  float* gxp = gx.data_ptr<float>();
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R));
  std::vector<float> part(P * D, 0.0f);  // per-part sums of grad_y * x * rstd (the weight gradient)
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* gw = part.data() + p * D;
      for (int64_t r = p * R / P; r < (p + 1) * R / P; ++r) {
        const float* xr = xp + r * D;
        const float* gr = gp + r * D;
        const float rs = rp[r];
        float a = 0.0f;
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < D; ++j) a += gr[j] * wp[j] * xr[j];
        const float c = a * rs * rs * rs / static_cast<float>(D);
        float* o = gxp + r * D;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          o[j] = gr[j] * wp[j] * rs - xr[j] * c;
          gw[j] += gr[j] * xr[j] * rs;
        }
      }
    }
  });
  at::Tensor gw = at::zeros({D}, x.options());
  float* gwp = gw.data_ptr<float>();
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j = 0; j < D; ++j) gwp[j] += part[p * D + j];
  return {gx, gw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(LRAM_NS, m) {
  m.def(
      "selective_scan_fwd(Tensor delta, Tensor x, Tensor A, Tensor B, Tensor C, Tensor? h0, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, bool delta_softplus, bool mul_delta, int checkpoint_every) -> (Tensor, Tensor, Tensor)");
  m.def(
      "selective_scan_bwd(Tensor grad_y, Tensor? grad_h_last, Tensor delta, Tensor x, Tensor A, Tensor B, Tensor C, "
      "Tensor? h0, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, bool mul_delta, Tensor checkpoints, "
      "int checkpoint_every) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(LRAM_NS, CPU, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd);
  m.impl("selective_scan_bwd", &selective_scan_bwd);
  m.impl("rms_norm_fwd", &rms_norm_fwd);
  m.impl("rms_norm_bwd", &rms_norm_bwd);
}
