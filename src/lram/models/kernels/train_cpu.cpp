// Fused CPU training kernels (forward and backward) for the small, memory-bound parts of the recurrent
// blocks, where a chain of PyTorch ops would read and write the activations many times:
//
// * block_diag_fwd / block_diag_bwd: the block-diagonal projections of the mLSTM (q, k, v; block size 4).
//   y[n, b*bs + o] = sum_i W[b, o, i] x[n, b*bs + i] is computed with 4 x 4 blocks as four multiply-adds
//   of 16 features at a time with in-lane broadcasts (the "quad" form), other block sizes as 2*bs - 1
//   shifted, contiguous multiply-adds over the feature axis (the "band" form: output j reads input j + d,
//   d in [-(bs-1), bs-1]); both vectorise, instead of N * blocks tiny products.
// * causal_conv_fwd / causal_conv_bwd: the causal depthwise conv over time (kernel K, with the K-1 inputs
//   before the window as an initial state) with an optional SiLU, as in the mLSTM, sLSTM and Mamba blocks.
//   The backward recomputes the pre-activation instead of saving it.
//
// float32, CPU, contiguous inputs; parallel over rows with per-thread partial sums for weight gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// exp for vectorised loops: 2^k * p(r), k = round(x log2 e), |r| <= ln2 / 2, degree-6 polynomial
// (relative error ~2e-7); x below -87 gives 0, x above 88 is taken as 88.  Branch-free, so `omp simd`
// loops vectorise it.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // round to nearest by adding and subtracting 1.5 * 2^23 (vectorises, where std::nearbyint is a libm call)
  const float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - kf * 0.693359375f) + kf * 2.12194440e-4f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;
  const float scale = __builtin_bit_cast(float, bits);
  return x <= -87.0f ? 0.0f : p * scale;
}

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

void expect(bool ok, const char* op, const char* what) { TORCH_CHECK(ok, "lram::", op, ": ", what); }

void expect_float(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == dim,
              "lram::", op, ": argument '", name, "' must be a float32 CPU tensor with ", dim, " dims, got ",
              t.defined() ? t.toString() : std::string("undefined"), " of shape ", t.defined() ? t.sizes() : at::IntArrayRef{});
}

// band[d + bs - 1][j] = W[b, o, o + d] for output feature j = b*bs + o (0 where o + d is outside the block)
std::vector<float> make_band(const float* W, int64_t nb, int64_t bs) {
  const int64_t F = nb * bs, nd = 2 * bs - 1;
  std::vector<float> band(nd * F, 0.0f);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t o = 0; o < bs; ++o)
      for (int64_t i = 0; i < bs; ++i) band[(i - o + bs - 1) * F + b * bs + o] = W[(b * bs + o) * bs + i];
  return band;
}

// 4 x 4 blocks (the mLSTM's q, k, v) in "quad" form: quad[i * F + j] = W[j / 4, j % 4, i], so that
// y[j] = sum_i quad_i[j] x[4 (j / 4) + i].  Sixteen outputs take four multiply-adds of a weight vector and an
// in-lane broadcast of x (a shuffle), against seven shifted, unaligned passes of the band form.  The
// transposed form (quadT_o[j] = W[j / 4, o, j % 4]) gives the input gradient the same way.
std::vector<float> make_quad(const float* W, int64_t nb, bool transpose) {
  const int64_t F = nb * 4;
  std::vector<float> q(4 * F);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t o = 0; o < 4; ++o)
      for (int64_t i = 0; i < 4; ++i) {
        const float w = W[(b * 4 + o) * 4 + i];
        if (transpose)
          q[o * F + b * 4 + i] = w;
        else
          q[i * F + b * 4 + o] = w;
      }
  return q;
}

void quad_to_weight(const float* dq, float* W, int64_t nb) {  // W[b, o, i] += dq_i[b*4 + o]
  const int64_t F = nb * 4;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t o = 0; o < 4; ++o)
      for (int64_t i = 0; i < 4; ++i) W[(b * 4 + o) * 4 + i] += dq[i * F + b * 4 + o];
}

typedef float vec16 __attribute__((vector_size(64)));  // GCC vector extensions: lowered to the target's SIMD
typedef int32_t ivec16 __attribute__((vector_size(64)));

inline vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, const vec16& v) { std::memcpy(p, &v, sizeof v); }

template <int i>
inline vec16 lane_broadcast(const vec16& x) {  // element i of every group of 4, repeated 4 times
  const ivec16 m = {i, i, i, i, 4 + i, 4 + i, 4 + i, 4 + i, 8 + i, 8 + i, 8 + i, 8 + i, 12 + i, 12 + i, 12 + i, 12 + i};
  return __builtin_shuffle(x, m);
}

// y = quad . x, or y += quad . x
inline void quad_apply(const float* __restrict q, const float* __restrict x, float* __restrict y, int64_t F, bool accumulate) {
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const vec16 xv = load16(x + j);
    vec16 acc = load16(q + j) * lane_broadcast<0>(xv) + load16(q + F + j) * lane_broadcast<1>(xv) +
                load16(q + 2 * F + j) * lane_broadcast<2>(xv) + load16(q + 3 * F + j) * lane_broadcast<3>(xv);
    if (accumulate) acc += load16(y + j);
    store16(y + j, acc);
  }
  for (; j < F; ++j) {
    const float* xb = x + (j & ~int64_t(3));
    const float v = q[j] * xb[0] + q[F + j] * xb[1] + q[2 * F + j] * xb[2] + q[3 * F + j] * xb[3];
    y[j] = accumulate ? y[j] + v : v;
  }
}

// dq_i[j] += dy[j] x[4 (j / 4) + i]: the weight gradient of y = quad . x
inline void quad_outer(const float* __restrict dy, const float* __restrict x, float* __restrict dq, int64_t F) {
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const vec16 xv = load16(x + j), g = load16(dy + j);
    store16(dq + j, load16(dq + j) + g * lane_broadcast<0>(xv));
    store16(dq + F + j, load16(dq + F + j) + g * lane_broadcast<1>(xv));
    store16(dq + 2 * F + j, load16(dq + 2 * F + j) + g * lane_broadcast<2>(xv));
    store16(dq + 3 * F + j, load16(dq + 3 * F + j) + g * lane_broadcast<3>(xv));
  }
  for (; j < F; ++j) {
    const float* xb = x + (j & ~int64_t(3));
    for (int64_t i = 0; i < 4; ++i) dq[i * F + j] += dy[j] * xb[i];
  }
}

// The causal conv's weight and bias gradients from one output row t: acc[k] += g * x[t + k] (k < K; row(u) is the
// conv input's row u of cat(state, x), nullptr where there is none), acc[K] += g.
template <class RowFn>
inline void conv_grad_accumulate(const float* __restrict g, RowFn row, int64_t t, int64_t K, int64_t C, float* acc) {
  for (int64_t k = 0; k < K; ++k) {
    const float* __restrict xr = row(t + k);
    if (!xr) continue;
    float* __restrict ak = acc + k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) ak[c] += g[c] * xr[c];
  }
  float* __restrict ab = acc + K * C;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) ab[c] += g[c];
}

// ------------------------------------------------------------------------------------------ block-diagonal
at::Tensor block_diag_fwd(const at::Tensor& x_in, const at::Tensor& W_in) {
  expect_float("block_diag_fwd", "W", W_in, 3);
  const int64_t nb = W_in.size(0), bs = W_in.size(1), F = nb * bs;
  expect(W_in.size(2) == bs, "block_diag_fwd", "W must be [blocks, bs, bs]");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.size(-1) == F, "lram::block_diag_fwd: argument 'x' must be float32 [..., ",
              F, "], got ", x_in.sizes());
  at::Tensor x = x_in.contiguous().view({-1, F});
  const int64_t N = x.size(0);
  at::Tensor y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (bs == 4) {
    const std::vector<float> quad = make_quad(W_in.contiguous().data_ptr<float>(), nb, false);
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) quad_apply(quad.data(), xp + n * F, yp + n * F, F, false);
    });
    return y.view(x_in.sizes());
  }
  const std::vector<float> band = make_band(W_in.contiguous().data_ptr<float>(), nb, bs);
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* __restrict xr = xp + n * F;
      float* __restrict yr = yp + n * F;
      for (int64_t j = 0; j < F; ++j) yr[j] = 0.0f;
      for (int64_t d = -(bs - 1); d < bs; ++d) {
        const float* __restrict bd = band.data() + (d + bs - 1) * F;
        const int64_t j0 = std::max<int64_t>(0, -d), j1 = std::min<int64_t>(F, F - d);
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) yr[j] += bd[j] * xr[j + d];
      }
    }
  });
  return y.view(x_in.sizes());
}

std::tuple<at::Tensor, at::Tensor> block_diag_bwd(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& W_in) {
  expect_float("block_diag_bwd", "W", W_in, 3);
  const int64_t nb = W_in.size(0), bs = W_in.size(1), F = nb * bs, nd = 2 * bs - 1;
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.size(-1) == F && dy_in.sizes() == x_in.sizes() &&
                  dy_in.scalar_type() == at::kFloat,
              "lram::block_diag_bwd: arguments 'dy' and 'x' must be float32 of equal shape [..., ", F, "]");
  at::Tensor x = x_in.contiguous().view({-1, F}), dy = dy_in.contiguous().view({-1, F});
  const int64_t N = x.size(0);
  at::Tensor dx = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *gp = dy.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N));
  if (bs == 4) {
    const std::vector<float> quadt = make_quad(W_in.contiguous().data_ptr<float>(), nb, true);
    std::vector<float> partial(threads * 4 * F, 0.0f);  // d loss / d W in quad form, per thread
    const int64_t per = (N + threads - 1) / threads;
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th)
        for (int64_t n = th * per; n < std::min(N, (th + 1) * per); ++n) {
          quad_apply(quadt.data(), gp + n * F, dxp + n * F, F, false);
          quad_outer(gp + n * F, xp + n * F, partial.data() + th * 4 * F, F);
        }
    });
    at::Tensor dW = at::zeros(W_in.sizes(), W_in.options());
    for (int64_t th = 0; th < threads; ++th) quad_to_weight(partial.data() + th * 4 * F, dW.data_ptr<float>(), nb);
    return {dx.view(x_in.sizes()), dW};
  }
  const std::vector<float> band = make_band(W_in.contiguous().data_ptr<float>(), nb, bs);
  std::vector<float> partial(threads * nd * F, 0.0f);  // d loss / d band, per thread
  const int64_t per = (N + threads - 1) / threads;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      float* __restrict acc = partial.data() + th * nd * F;
      for (int64_t n = th * per; n < std::min(N, (th + 1) * per); ++n) {
        const float* __restrict xr = xp + n * F;
        const float* __restrict gr = gp + n * F;
        float* __restrict dr = dxp + n * F;
        for (int64_t j = 0; j < F; ++j) dr[j] = 0.0f;
        for (int64_t d = -(bs - 1); d < bs; ++d) {
          const float* __restrict bd = band.data() + (d + bs - 1) * F;
          float* __restrict ad = acc + (d + bs - 1) * F;
          const int64_t j0 = std::max<int64_t>(0, -d), j1 = std::min<int64_t>(F, F - d);
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j) {
            dr[j + d] += bd[j] * gr[j];  // y_j = sum_d band_d[j] x_{j+d}
            ad[j] += gr[j] * xr[j + d];
          }
        }
      }
    }
  });
  at::Tensor dW = at::zeros(W_in.sizes(), W_in.options());
  float* dWp = dW.data_ptr<float>();
  for (int64_t th = 0; th < threads; ++th) {
    const float* acc = partial.data() + th * nd * F;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t o = 0; o < bs; ++o)
        for (int64_t i = 0; i < bs; ++i) dWp[(b * bs + o) * bs + i] += acc[(i - o + bs - 1) * F + b * bs + o];
  }
  return {dx.view(x_in.sizes()), dW};
}

// ------------------------------------------------------------------------------------------ causal conv
// the K-1 inputs before x[b, t0] (from the state where t0 - K + 1 + k < 0): pointer to input row u of row b
struct ConvInput {
  const float* x;      // [B, T, C]
  const float* state;  // [B, K-1, C] or nullptr (zeros)
  int64_t T, C, K;
  const float* row(int64_t b, int64_t u) const {  // u in [0, T + K - 1): index into cat(state, x)
    if (u >= K - 1) return x + (b * T + (u - (K - 1))) * C;
    return state ? state + (b * (K - 1) + u) * C : nullptr;
  }
};

at::Tensor causal_conv_fwd(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
                           const std::optional<at::Tensor>& state_in, bool silu) {
  expect_float("causal_conv_fwd", "x", x_in, 3);
  expect_float("causal_conv_fwd", "weight", w_in, 2);
  expect_float("causal_conv_fwd", "bias", bias_in, 1);
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), K = w_in.size(1);
  TORCH_CHECK(w_in.size(0) == C && bias_in.size(0) == C, "lram::causal_conv_fwd: 'weight' must be [", C,
              ", K] and 'bias' [", C, "], got ", w_in.sizes(), " and ", bias_in.sizes());
  at::Tensor state;
  if (state_in.has_value() && state_in->defined()) {
    expect_float("causal_conv_fwd", "state", *state_in, 3);
    TORCH_CHECK(state_in->size(0) == B && state_in->size(1) == K - 1 && state_in->size(2) == C,
                "lram::causal_conv_fwd: 'state' must be [", B, ", ", K - 1, ", ", C, "], got ", state_in->sizes());
    state = state_in->contiguous();
  }
  at::Tensor x = x_in.contiguous(), wt = w_in.t().contiguous(), bias = bias_in.contiguous();  // wt [K, C]
  at::Tensor y = at::empty_like(x);
  const ConvInput in{x.data_ptr<float>(), state.defined() ? state.data_ptr<float>() : nullptr, T, C, K};
  const float *wp = wt.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * T, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      float* __restrict yr = yp + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = bp[c];
      for (int64_t k = 0; k < K; ++k) {
        const float* __restrict xr = in.row(b, t + k);
        if (!xr) continue;
        const float* __restrict wk = wp + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] += wk[c] * xr[c];
      }
    }
  });
  if (silu) at::silu_(y);  // ATen's vectorised exponential
  return y;
}

// returns dx [B, T, C], dweight [C, K], dbias [C], dstate [B, K-1, C] (undefined without a state)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv_bwd(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& state_in, bool silu) {
  expect_float("causal_conv_bwd", "dy", dy_in, 3);
  expect_float("causal_conv_bwd", "x", x_in, 3);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "lram::causal_conv_bwd: 'dy' must have the shape of 'x'");
  const int64_t B = x_in.size(0), T = x_in.size(1), C = x_in.size(2), K = w_in.size(1);
  at::Tensor state;
  if (state_in.has_value() && state_in->defined()) state = state_in->contiguous();
  at::Tensor x = x_in.contiguous(), wt = w_in.t().contiguous(), bias = bias_in.contiguous(), dy = dy_in.contiguous();
  const ConvInput in{x.data_ptr<float>(), state.defined() ? state.data_ptr<float>() : nullptr, T, C, K};
  const float *wp = wt.data_ptr<float>(), *bp = bias.data_ptr<float>();
  // g = d loss / d pre-activation (recomputed through the SiLU)
  at::Tensor g = silu ? at::empty_like(x) : dy;
  if (silu) {  // pre-activation recomputed (K multiply-adds), its sigmoid through ATen's vectorised exp
    at::Tensor pre = causal_conv_fwd(x, w_in, bias, state.defined() ? std::optional<at::Tensor>(state) : std::nullopt, false);
    at::Tensor sig = at::sigmoid(pre);
    const float *dyp = dy.data_ptr<float>(), *pp = pre.data_ptr<float>(), *sp = sig.data_ptr<float>();
    float* gp = g.data_ptr<float>();
    at::parallel_for(0, B * T * C, 4096, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) gp[i] = dyp[i] * sp[i] * (1.0f + pp[i] * (1.0f - sp[i]));
    });
  }
  const float* gp = g.data_ptr<float>();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dstate = state.defined() ? at::empty_like(state) : at::Tensor();
  float* dxp = dx.data_ptr<float>();
  float* dsp = state.defined() ? dstate.data_ptr<float>() : nullptr;
  // d cat(state, x)[u] = sum_k w[k] g[u - k], 0 <= u - k < T
  const int64_t U = T + K - 1;
  at::parallel_for(0, B * U, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / U, u = r % U;
      float* __restrict out = u >= K - 1 ? dxp + (b * T + u - (K - 1)) * C : (dsp ? dsp + (b * (K - 1) + u) * C : nullptr);
      if (!out) continue;
      for (int64_t c = 0; c < C; ++c) out[c] = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t t = u - k;
        if (t < 0 || t >= T) continue;
        const float* __restrict gr = gp + (b * T + t) * C;
        const float* __restrict wk = wp + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * gr[c];
      }
    }
  });
  // weight and bias gradients: per-thread partial sums over rows
  const int64_t rows = B * T;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<float> partial(threads * (K + 1) * C, 0.0f);
  const int64_t per = (rows + threads - 1) / threads;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      float* __restrict acc = partial.data() + th * (K + 1) * C;
      for (int64_t r = th * per; r < std::min(rows, (th + 1) * per); ++r) {
        const int64_t b = r / T, t = r % T;
        conv_grad_accumulate(gp + r * C, [&](int64_t u) { return in.row(b, u); }, t, K, C, acc);
      }
    }
  });
  at::Tensor dw = at::zeros({C, K}, x.options()), db = at::zeros({C}, x.options());
  float *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
  for (int64_t th = 0; th < threads; ++th) {
    const float* acc = partial.data() + th * (K + 1) * C;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c) dwp[c * K + k] += acc[k * C + c];
    for (int64_t c = 0; c < C; ++c) dbp[c] += acc[K * C + c];
  }
  return {dx, dw, db, dstate};
}

// ------------------------------------------------------------------------------------------ mLSTM cell

// S <- scale * S_raw * D (lower triangle, 0 above) with D = exp(a_s - run_t), a = i - b; fills D too when given.
// Returns the row sums in r and, when m/arg are given, the stabiliser m_t = b_t + run_t and its arg-max.
inline void cell_gates(float* S, float* D, const float* ih, const float* bh, float* a, int64_t T, float scale, float* r,
                       float* m, int64_t* arg) {
  for (int64_t s = 0; s < T; ++s) a[s] = ih[s] - bh[s];
  float run = -INFINITY;
  int64_t at_ = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (a[t] > run) { run = a[t]; at_ = t; }  // first maximum, as torch.max
    if (m) {
      m[t] = bh[t] + run;
      arg[t] = at_;
    }
    float* __restrict srow = S + t * T;
    float* __restrict drow = D + t * T;
    const float* __restrict av = a;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t s = 0; s <= t; ++s) {
      const float dv = exp_approx(av[s] - run);
      drow[s] = dv;
      const float sv = srow[s] * scale * dv;
      srow[s] = sv;
      acc += sv;
    }
    for (int64_t s = t + 1; s < T; ++s) drow[s] = srow[s] = 0.0f;
    r[t] = acc;
  }
}

// The gate pass backward of one head: with ds = d loss / d S (from the products), dr, dm = d loss / d r, d m through
// the normaliser: out = scale * (ds + dr) * D (the gradient of the unscaled q k^T; out may be ds itself), and
// d log D = (ds + dr) * S summed into the gradients of i (di) and of b = cumsum(log sigmoid f) (db), the
// stabiliser's gradient to each row's arg-max.  col: T floats of scratch.
inline void cell_gates_backward(const float* ds, float* out, const float* S, const float* D, const float* dr,
                                const float* dm, const int64_t* arg, int64_t T, float scale, float* col, float* di,
                                float* db) {
  std::fill(col, col + T, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    const float* g = ds + t * T;
    float* o = out + t * T;
    const float* __restrict sr = S + t * T;
    const float* __restrict drow = D + t * T;
    const float add = dr[t];
    float row = 0.0f;
#pragma omp simd reduction(+ : row)
    for (int64_t s2 = 0; s2 <= t; ++s2) {
      const float gg = g[s2] + add;
      o[s2] = gg * drow[s2] * scale;
      const float gl = gg * sr[s2];
      row += gl;
      col[s2] += gl;
    }
    for (int64_t s2 = t + 1; s2 < T; ++s2) o[s2] = 0.0f;
    col[arg[t]] += dm[t] - row;  // m_t = max_s log D[t, s]: its gradient goes to the arg-max entry
    db[t] = dm[t];
  }
  for (int64_t t = 0; t < T; ++t) {
    di[t] = col[t];
    db[t] -= col[t];
  }
}

// Forward gate pass of the parallel mLSTM cell for every head (rows of [H, T, T] matrices):
// log D[t, s] = b_t - b_s + i_s (s <= t) with b = cumsum(log sigmoid f); m_t = max_s log D[t, s] is a prefix
// maximum of a_s = i_s - b_s; D = exp(log D - m) (0 above the diagonal); S = scale * S_raw * D in place; r_t = sum_s S.
// Returns D, m, the arg-max index per row and r.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlstm_gates_fwd(at::Tensor& s_raw, const at::Tensor& b_in,
                                                                          const at::Tensor& i_in, double scale) {
  expect_float("mlstm_gates_fwd", "s_raw", s_raw, 3);
  expect_float("mlstm_gates_fwd", "b", b_in, 2);
  expect_float("mlstm_gates_fwd", "i", i_in, 2);
  const int64_t H = s_raw.size(0), T = s_raw.size(1);
  TORCH_CHECK(s_raw.size(2) == T && s_raw.is_contiguous(), "lram::mlstm_gates_fwd: 's_raw' must be contiguous [H, T, T], got ",
              s_raw.sizes());
  TORCH_CHECK(b_in.size(0) == H && b_in.size(1) == T && i_in.sizes() == b_in.sizes(),
              "lram::mlstm_gates_fwd: 'b' and 'i' must be [", H, ", ", T, "]");
  at::Tensor b = b_in.contiguous(), i = i_in.contiguous();
  at::Tensor d = at::empty_like(s_raw), m = at::empty_like(b), r = at::empty_like(b);
  at::Tensor arg = at::empty({H, T}, b.options().dtype(at::kLong));
  const float *bp = b.data_ptr<float>(), *ip = i.data_ptr<float>();
  float *sp = s_raw.data_ptr<float>(), *dp = d.data_ptr<float>(), *mp = m.data_ptr<float>(), *rp = r.data_ptr<float>();
  int64_t* ap = arg.data_ptr<int64_t>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> a(T);
    for (int64_t h = h0; h < h1; ++h)
      cell_gates(sp + h * T * T, dp + h * T * T, ip + h * T, bp + h * T, a.data(), T, fscale, rp + h * T, mp + h * T,
                 ap + h * T);
  });
  return {d, m, arg, r};
}

// Backward gate pass: with ds = d loss / d S (from the products), dr = d loss / d r and dm = d loss / d m
// through the normaliser, returns scale * d loss / d S_raw (= (ds + dr) * D * scale: the gradient of the unscaled
// q k^T, so dq = ds_raw k and dk = ds_raw^T q directly), and the gradients of i and b
// (d log D[t, s] = (ds + dr) * S, plus the stabiliser's gradient at each row's arg-max).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlstm_gates_bwd(const at::Tensor& ds_in, const at::Tensor& s_in,
                                                               const at::Tensor& d_in, const at::Tensor& dr_in,
                                                               const at::Tensor& dm_in, const at::Tensor& arg_in,
                                                               double scale) {
  expect_float("mlstm_gates_bwd", "ds", ds_in, 3);
  expect_float("mlstm_gates_bwd", "s", s_in, 3);
  expect_float("mlstm_gates_bwd", "d", d_in, 3);
  expect_float("mlstm_gates_bwd", "dr", dr_in, 2);
  expect_float("mlstm_gates_bwd", "dm", dm_in, 2);
  const int64_t H = ds_in.size(0), T = ds_in.size(1);
  TORCH_CHECK(s_in.sizes() == ds_in.sizes() && d_in.sizes() == ds_in.sizes() && ds_in.size(2) == T,
              "lram::mlstm_gates_bwd: 'ds', 's' and 'd' must be [H, T, T] of equal shape");
  TORCH_CHECK(dr_in.size(0) == H && dr_in.size(1) == T && dm_in.sizes() == dr_in.sizes() && arg_in.sizes() == dr_in.sizes() &&
                  arg_in.scalar_type() == at::kLong,
              "lram::mlstm_gates_bwd: 'dr', 'dm' and 'arg' (int64) must be [", H, ", ", T, "]");
  at::Tensor ds = ds_in.contiguous(), s = s_in.contiguous(), d = d_in.contiguous();
  at::Tensor dr = dr_in.contiguous(), dm = dm_in.contiguous(), arg = arg_in.contiguous();
  at::Tensor ds_raw = at::empty_like(ds), di = at::empty_like(dr), db = at::empty_like(dr);
  const float *dsp = ds.data_ptr<float>(), *sp = s.data_ptr<float>(), *dp = d.data_ptr<float>();
  const float *drp = dr.data_ptr<float>(), *dmp = dm.data_ptr<float>();
  const int64_t* ap = arg.data_ptr<int64_t>();
  float *dsr = ds_raw.data_ptr<float>(), *dip = di.data_ptr<float>(), *dbp = db.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> col(T);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t o = h * T * T, g = h * T;
      cell_gates_backward(dsp + o, dsr + o, sp + o, dp + o, drp + g, dmp + g, ap + g, T, fscale, col.data(), dip + g,
                          dbp + g);
    }
  });
  return {ds_raw, di, db};
}

// ------------------------------------------------------------------------------------------ whole parallel cell
// The parallel mLSTM cell per head with every [T, T] matrix kept in a per-thread buffer (in cache), the way
// flash attention keeps its score tiles: S_raw = q k^T (BLAS), the gate pass of mlstm_gates_fwd, h = S v / den;
// the backward recomputes S and D from q, k and the gates instead of saving them.  Products skip the blocks
// above the diagonal (row tiles of `tile` tokens).  The BLAS is the one PyTorch links (sgemm_, found at run
// time: has_sgemm() says whether this build can use it).

using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                          const int*, const float*, const int*, const float*, float*, const int*);

sgemm_fn find_sgemm() {
  static sgemm_fn f = reinterpret_cast<sgemm_fn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return f;
}

// column-major C[m x n] = alpha op(A) op(B) + beta C (Fortran BLAS conventions)
inline void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float beta, float* c, int64_t ldc) {
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  const int LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
  const float one = 1.0f;
  find_sgemm()(&ta, &tb, &M, &N, &K, &one, a, &LDA, b, &LDB, &beta, c, &LDC);
}

// row-major X[T, T] (rows r0..r1, columns 0..r1 of each row tile) = A[T, DH] B[T, DH]^T, lower row tiles only
inline void tril_abt(const float* A, const float* B, float* X, int64_t T, int64_t DH, int64_t tile) {
  for (int64_t r0 = 0; r0 < T; r0 += tile) {
    const int64_t r1 = std::min(T, r0 + tile);
    sgemm('T', 'N', r1, r1 - r0, DH, B, DH, A + r0 * DH, DH, 0.0f, X + r0 * T, T);
  }
}

// row-major Y[T, DH] = X[T, T] C[T, DH] with X lower triangular (by row tiles)
inline void tril_xc(const float* X, const float* C, float* Y, int64_t T, int64_t DH, int64_t tile) {
  for (int64_t r0 = 0; r0 < T; r0 += tile) {
    const int64_t r1 = std::min(T, r0 + tile);
    sgemm('N', 'N', DH, r1 - r0, r1, C, DH, X + r0 * T, T, 0.0f, Y + r0 * DH, DH);
  }
}

// row-major Y[T, DH] = X[T, T]^T C[T, DH] with X lower triangular: column tile c0..c1 of Y reads rows c0..T
inline void tril_xtc(const float* X, const float* C, float* Y, int64_t T, int64_t DH, int64_t tile) {
  for (int64_t c0 = 0; c0 < T; c0 += tile) {
    const int64_t c1 = std::min(T, c0 + tile);
    sgemm('N', 'T', DH, c1 - c0, T - c0, C + c0 * DH, DH, X + c0 * T + c0, T, 0.0f, Y + c0 * DH, DH);
  }
}

bool has_sgemm() { return find_sgemm() != nullptr; }

struct CellArgs {
  int64_t H, T, DH, tile;
  float scale, eps;
};

CellArgs cell_args(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& i,
                   const at::Tensor& b, double scale, double eps, int64_t tile) {
  expect_float(op, "q", q, 3);
  expect_float(op, "k", k, 3);
  expect_float(op, "v", v, 3);
  expect_float(op, "i", i, 2);
  expect_float(op, "b", b, 2);
  TORCH_CHECK(find_sgemm() != nullptr, "lram::", op, ": no sgemm_ in this process (PyTorch built without a Fortran BLAS)");
  const int64_t H = q.size(0), T = q.size(1), DH = q.size(2);
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes() && q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
              "lram::", op, ": 'q', 'k', 'v' must be contiguous [H, T, DH] of equal shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(i.size(0) == H && i.size(1) == T && b.sizes() == i.sizes(), "lram::", op, ": 'i' and 'b' must be [", H, ", ",
              T, "]");
  TORCH_CHECK(tile > 0, "lram::", op, ": 'tile' must be positive");
  return {H, T, DH, tile, static_cast<float>(scale), static_cast<float>(eps)};
}

// forward: returns h [H, T, DH], m, arg (int64), r, den [H, T]
std::vector<at::Tensor> mlstm_cell_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& i_in,
                                       const at::Tensor& b_in, double scale, double eps, int64_t tile) {
  const CellArgs c = cell_args("mlstm_cell_fwd", q, k, v, i_in, b_in, scale, eps, tile);
  const int64_t H = c.H, T = c.T, DH = c.DH;
  at::Tensor i = i_in.contiguous(), b = b_in.contiguous();
  at::Tensor h = at::empty_like(q), m = at::empty_like(i), r = at::empty_like(i), den = at::empty_like(i);
  at::Tensor arg = at::empty({H, T}, i.options().dtype(at::kLong));
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *ip = i.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *hp = h.data_ptr<float>(), *mp = m.data_ptr<float>(), *rp = r.data_ptr<float>(), *denp = den.data_ptr<float>();
  int64_t* ap = arg.data_ptr<int64_t>();
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> buf(2 * T * T + T);
    float *S = buf.data(), *D = S + T * T, *a = D + T * T;
    for (int64_t hh = h0; hh < h1; ++hh) {
      const int64_t o = hh * T * DH, g = hh * T;
      tril_abt(qp + o, kp + o, S, T, DH, c.tile);
      cell_gates(S, D, ip + g, bp + g, a, T, c.scale, rp + g, mp + g, ap + g);
      tril_xc(S, vp + o, hp + o, T, DH, c.tile);
      for (int64_t t = 0; t < T; ++t) {
        const float dn = std::max(std::fabs(rp[g + t]), std::exp(-mp[g + t])) + c.eps;
        denp[g + t] = dn;
        const float inv = 1.0f / dn;
        float* __restrict hr = hp + o + t * DH;
#pragma omp simd
        for (int64_t d = 0; d < DH; ++d) hr[d] *= inv;
      }
    }
  });
  return {h, m, arg, r, den};
}

// backward: from dh and the forward's h, m, arg, r, den returns dq, dk, dv [H, T, DH], di, db [H, T]
// (db: the gradient of b = cumsum(log sigmoid f); the caller maps it to f)
std::vector<at::Tensor> mlstm_cell_bwd(const at::Tensor& dh_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& i_in, const at::Tensor& b_in, const at::Tensor& h_in,
                                       const at::Tensor& m_in, const at::Tensor& arg_in, const at::Tensor& r_in,
                                       const at::Tensor& den_in, double scale, double eps, int64_t tile) {
  const CellArgs c = cell_args("mlstm_cell_bwd", q, k, v, i_in, b_in, scale, eps, tile);
  const int64_t H = c.H, T = c.T, DH = c.DH;
  TORCH_CHECK(dh_in.sizes() == q.sizes() && h_in.sizes() == q.sizes(), "lram::mlstm_cell_bwd: 'dh' and 'h' must be [", H,
              ", ", T, ", ", DH, "]");
  at::Tensor dh = dh_in.contiguous(), hcur = h_in.contiguous(), i = i_in.contiguous(), b = b_in.contiguous();
  at::Tensor m = m_in.contiguous(), arg = arg_in.contiguous(), r = r_in.contiguous(), den = den_in.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(q), dv = at::empty_like(q);
  at::Tensor di = at::empty_like(i), db = at::empty_like(i);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *dhp = dh.data_ptr<float>(), *hp = hcur.data_ptr<float>(), *ip = i.data_ptr<float>(), *bp = b.data_ptr<float>();
  const float *mp = m.data_ptr<float>(), *rp = r.data_ptr<float>(), *denp = den.data_ptr<float>();
  const int64_t* ap = arg.data_ptr<int64_t>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  float *dip = di.data_ptr<float>(), *dbp = db.data_ptr<float>();
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> buf(3 * T * T + T * DH + 5 * T);
    float *S = buf.data(), *D = S + T * T, *G = D + T * T, *dnum = G + T * T, *a = dnum + T * DH;
    float *rr = a + T, *dr = rr + T, *dm = dr + T, *col = dm + T;
    for (int64_t hh = h0; hh < h1; ++hh) {
      const int64_t o = hh * T * DH, g = hh * T;
      // recompute S = scale * S_raw * D and D (the forward's values: same products, same gate pass)
      tril_abt(qp + o, kp + o, S, T, DH, c.tile);
      cell_gates(S, D, ip + g, bp + g, a, T, c.scale, rr, nullptr, nullptr);
      // through h = num / den, den = max(|r|, exp(-m)) + eps
      for (int64_t t = 0; t < T; ++t) {
        const float dn = denp[g + t], em = std::exp(-mp[g + t]);
        const float* __restrict gr = dhp + o + t * DH;
        const float* __restrict hr = hp + o + t * DH;
        float* __restrict nr = dnum + t * DH;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < DH; ++d) {
          nr[d] = gr[d] / dn;
          dot += gr[d] * hr[d];
        }
        const float dden = -dot / dn;
        const float rt = rp[g + t];
        const bool by_r = std::fabs(rt) >= em;
        dr[t] = by_r ? dden * (rt > 0.0f ? 1.0f : (rt < 0.0f ? -1.0f : 0.0f)) : 0.0f;
        dm[t] = by_r ? 0.0f : -dden * em;
      }
      tril_abt(dnum, vp + o, G, T, DH, c.tile);  // G = dS = dnum v^T
      tril_xtc(S, dnum, dvp + o, T, DH, c.tile);  // dv = S^T dnum
      cell_gates_backward(G, G, S, D, dr, dm, ap + g, T, c.scale, col, dip + g, dbp + g);
      tril_xc(G, kp + o, dqp + o, T, DH, c.tile);   // dq = dS_raw k
      tril_xtc(G, qp + o, dkp + o, T, DH, c.tile);  // dk = dS_raw^T q
    }
  });
  return {dq, dk, dv, di, db};
}

// ------------------------------------------------------------------------------------------ mLSTM layer
// The parts of an mLSTM layer between its two large projections, for training windows (many tokens):
//
//   pre:  up [B, T, 2I] (= [x_m | z])  ->  x_c = SiLU(causal conv(x_m)), q = BD_q(x_c), k = BD_k(x_c),
//         v = BD_v(x_m), q, k, v in the cell's head-major layout [B, NH, T, DH], and (optionally) the cell's gate
//         pre-activations g = W_c x_c + W_m x_m + b [B, G, T] (the gate weights with the block-diagonal maps
//         folded in: the gates of [q, k, v] without a product over the token-major activations);
//   post: h [B, NH, T, DH] (the cell's output) -> y = (LN_head(h) * w + skip * x_c) * SiLU(z)  [B, T, I]
//
// one pass over each token's features forward and backward (lram.models.xlstm.MLSTMLayer computes the same
// with PyTorch ops).  Weight
// gradients are summed per thread, then added.

// shared arguments of the pre pass
struct PreArgs {
  int64_t B, T, I, NH, DH, K, bs;
  const float* up;      // [B, T, 2I]
  const float* state;   // [B, K-1, I] or nullptr
  const float* conv_w;  // [K, I] (transposed)
  const float* conv_b;  // [I]
  const float* band_q;  // the block-diagonal weights: quad form [4, I] when bs == 4, else band form [2bs-1, I]
  const float* band_k;
  const float* band_v;
  const float* quadt_q;  // bs == 4: the transposed quad forms (input gradients)
  const float* quadt_k;
  const float* quadt_v;
  int64_t reps() const { return bs == 4 ? 4 : 2 * bs - 1; }  // rows of a weight's (gradient) representation
  const float* xm(int64_t b, int64_t u) const {  // row u of cat(state, x_m) for batch row b
    if (u >= K - 1) return up + (b * T + (u - (K - 1))) * 2 * I;
    return state ? state + (b * (K - 1) + u) * I : nullptr;
  }
};

// y = band . x over features (the block-diagonal product)
inline void band_apply(const float* __restrict band, const float* __restrict x, float* __restrict y, int64_t F, int64_t bs) {
  for (int64_t j = 0; j < F; ++j) y[j] = 0.0f;
  for (int64_t d = -(bs - 1); d < bs; ++d) {
    const float* __restrict bd = band + (d + bs - 1) * F;
    const int64_t j0 = std::max<int64_t>(0, -d), j1 = std::min<int64_t>(F, F - d);
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) y[j] += bd[j] * x[j + d];
  }
}

// dx += band^T . dy, and dband += dy (x) x (banded outer product)
inline void band_backward(const float* __restrict band, const float* __restrict x, const float* __restrict dy,
                          float* __restrict dx, float* __restrict dband, int64_t F, int64_t bs) {
  for (int64_t d = -(bs - 1); d < bs; ++d) {
    const float* __restrict bd = band + (d + bs - 1) * F;
    float* __restrict ad = dband + (d + bs - 1) * F;
    const int64_t j0 = std::max<int64_t>(0, -d), j1 = std::min<int64_t>(F, F - d);
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) {
      dx[j + d] += bd[j] * dy[j];
      ad[j] += dy[j] * x[j + d];
    }
  }
}

// conv pre-activation of row (b, t): pre = bias + sum_k w_k * xm[t + k]
inline void conv_row(const PreArgs& a, int64_t b, int64_t t, float* __restrict pre) {
  const int64_t I = a.I;
  for (int64_t c = 0; c < I; ++c) pre[c] = a.conv_b[c];
  for (int64_t k = 0; k < a.K; ++k) {
    const float* __restrict xr = a.xm(b, t + k);
    if (!xr) continue;
    const float* __restrict wk = a.conv_w + k * I;
#pragma omp simd
    for (int64_t c = 0; c < I; ++c) pre[c] += wk[c] * xr[c];
  }
}

// y = BD(x) and its backward (dx += BD^T dy, dw += the weight gradient in w's representation)
inline void bd_forward(const PreArgs& a, const float* w, const float* x, float* y) {
  if (a.bs == 4)
    quad_apply(w, x, y, a.I, false);
  else
    band_apply(w, x, y, a.I, a.bs);
}

inline void bd_backward(const PreArgs& a, const float* w, const float* wt, const float* x, const float* dy, float* dx,
                        float* dw) {
  if (a.bs == 4) {
    quad_apply(wt, dy, dx, a.I, true);
    quad_outer(dy, x, dw, a.I);
  } else {
    band_backward(w, x, dy, dx, dw, a.I, a.bs);
  }
}

void band_to_weight(const float* band, float* W, int64_t nb, int64_t bs) {  // W[b, o, i] += band[i - o][b*bs + o]
  const int64_t F = nb * bs;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t o = 0; o < bs; ++o)
      for (int64_t i = 0; i < bs; ++i) W[(b * bs + o) * bs + i] += band[(i - o + bs - 1) * F + b * bs + o];
}

// d x_c += sum_j g[j * stride] W_c[j], d x_m += sum_j g[j * stride] W_m[j] (the gates' input gradients of one token)
__attribute__((noinline)) void gate_input_grads(const float* g, int64_t stride, int64_t G, const float* __restrict w_c,
                                                const float* __restrict w_m, int64_t I, float* __restrict dx,
                                                float* __restrict dxm) {
  for (int64_t j = 0; j < G; ++j) {
    const float gj = g[j * stride];
    const float* __restrict a = w_c + j * I;
    const float* __restrict m = w_m + j * I;
#pragma omp simd
    for (int64_t c = 0; c < I; ++c) {
      dx[c] += gj * a[c];
      dxm[c] += gj * m[c];
    }
  }
}

// the optional gate projection of the pre pass: g[j] = b[j] + w_c[j] . x_c + w_m[j] . x_m, j < G
struct GateArgs {
  int64_t G = 0;
  const float* w_c = nullptr;  // [G, I]
  const float* w_m = nullptr;  // [G, I]
  const float* b = nullptr;    // [G]
  at::Tensor wc, wm, bias;     // keep the contiguous copies alive
};

GateArgs gate_args(const char* op, const std::optional<at::Tensor>& w_c, const std::optional<at::Tensor>& w_m,
                   const std::optional<at::Tensor>& b, int64_t I, bool need_bias) {
  GateArgs g;
  if (!(w_c.has_value() && w_c->defined())) return g;
  expect_float(op, "gate_w_c", *w_c, 2);
  TORCH_CHECK(w_m.has_value() && w_m->defined(), "lram::", op, ": 'gate_w_m' is needed with 'gate_w_c'");
  expect_float(op, "gate_w_m", *w_m, 2);
  g.G = w_c->size(0);
  TORCH_CHECK(w_c->size(1) == I && w_m->sizes() == w_c->sizes(), "lram::", op, ": 'gate_w_c' and 'gate_w_m' must be [G, ", I,
              "], got ", w_c->sizes(), " and ", w_m->sizes());
  g.wc = w_c->contiguous();
  g.wm = w_m->contiguous();
  g.w_c = g.wc.data_ptr<float>();
  g.w_m = g.wm.data_ptr<float>();
  if (need_bias) {
    TORCH_CHECK(b.has_value() && b->defined() && b->dim() == 1 && b->size(0) == g.G && b->scalar_type() == at::kFloat,
                "lram::", op, ": 'gate_b' must be float32 [", g.G, "]");
    g.bias = b->contiguous();
    g.b = g.bias.data_ptr<float>();
  }
  return g;
}

struct PreInputs {
  at::Tensor up, state, conv_wt, conv_b;
  std::vector<float> band_q, band_k, band_v, quadt_q, quadt_k, quadt_v;
  PreArgs args;
};

PreInputs pre_inputs(const char* op, const at::Tensor& up, const std::optional<at::Tensor>& state, const at::Tensor& conv_w,
                     const at::Tensor& conv_b, const at::Tensor& w_q, const at::Tensor& w_k, const at::Tensor& w_v,
                     int64_t NH) {
  expect_float(op, "up", up, 3);
  expect_float(op, "conv_w", conv_w, 2);
  expect_float(op, "conv_b", conv_b, 1);
  expect_float(op, "w_q", w_q, 3);
  expect_float(op, "w_k", w_k, 3);
  expect_float(op, "w_v", w_v, 3);
  PreInputs in;
  const int64_t B = up.size(0), T = up.size(1), I = up.size(2) / 2, K = conv_w.size(1);
  const int64_t nb = w_q.size(0), bs = w_q.size(1);
  TORCH_CHECK(up.size(2) == 2 * I && NH > 0 && I % NH == 0, "lram::", op, ": 'up' must be [B, T, 2I] with I divisible by ", NH,
              " heads, got ", up.sizes());
  TORCH_CHECK(conv_w.size(0) == I && conv_b.size(0) == I, "lram::", op, ": 'conv_w' must be [", I, ", K] and 'conv_b' [", I, "]");
  for (const at::Tensor* w : {&w_q, &w_k, &w_v})
    TORCH_CHECK(w->size(0) == nb && w->size(1) == bs && w->size(2) == bs && nb * bs == I, "lram::", op,
                ": 'w_q', 'w_k', 'w_v' must be [blocks, bs, bs] with blocks * bs = ", I);
  in.up = up.contiguous();
  if (state.has_value() && state->defined()) {
    expect_float(op, "state", *state, 3);
    TORCH_CHECK(state->size(0) == B && state->size(1) == K - 1 && state->size(2) == I, "lram::", op, ": 'state' must be [", B,
                ", ", K - 1, ", ", I, "], got ", state->sizes());
    in.state = state->contiguous();
  }
  in.conv_wt = conv_w.t().contiguous();
  in.conv_b = conv_b.contiguous();
  const at::Tensor wq = w_q.contiguous(), wk = w_k.contiguous(), wv = w_v.contiguous();
  if (bs == 4) {
    in.band_q = make_quad(wq.data_ptr<float>(), nb, false);
    in.band_k = make_quad(wk.data_ptr<float>(), nb, false);
    in.band_v = make_quad(wv.data_ptr<float>(), nb, false);
    in.quadt_q = make_quad(wq.data_ptr<float>(), nb, true);
    in.quadt_k = make_quad(wk.data_ptr<float>(), nb, true);
    in.quadt_v = make_quad(wv.data_ptr<float>(), nb, true);
  } else {
    in.band_q = make_band(wq.data_ptr<float>(), nb, bs);
    in.band_k = make_band(wk.data_ptr<float>(), nb, bs);
    in.band_v = make_band(wv.data_ptr<float>(), nb, bs);
  }
  in.args = PreArgs{B, T, I, NH, I / NH, K, bs, in.up.data_ptr<float>(), in.state.defined() ? in.state.data_ptr<float>() : nullptr,
                    in.conv_wt.data_ptr<float>(), in.conv_b.data_ptr<float>(), in.band_q.data(), in.band_k.data(),
                    in.band_v.data(), in.quadt_q.data(), in.quadt_k.data(), in.quadt_v.data()};
  return in;
}

// returns q, k, v [B, NH, T, DH], x_c [B, T, I] and, with gate weights, the gate pre-activations [B, G, T]
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlstm_pre_fwd(
    const at::Tensor& up_in, const std::optional<at::Tensor>& state_in, const at::Tensor& conv_w, const at::Tensor& conv_b,
    const at::Tensor& w_q, const at::Tensor& w_k, const at::Tensor& w_v, int64_t NH,
    const std::optional<at::Tensor>& gate_w_c, const std::optional<at::Tensor>& gate_w_m,
    const std::optional<at::Tensor>& gate_b) {
  PreInputs in = pre_inputs("mlstm_pre_fwd", up_in, state_in, conv_w, conv_b, w_q, w_k, w_v, NH);
  const PreArgs& a = in.args;
  const int64_t B = a.B, T = a.T, I = a.I, DH = a.DH;
  const GateArgs ga = gate_args("mlstm_pre_fwd", gate_w_c, gate_w_m, gate_b, I, true);
  const int64_t G = ga.G;
  auto opts = in.up.options();
  at::Tensor q = at::empty({B, NH, T, DH}, opts), k = at::empty_like(q), v = at::empty_like(q);
  at::Tensor xc = at::empty({B, T, I}, opts);
  at::Tensor gates = G ? at::empty({B, G, T}, opts) : at::Tensor();
  float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>(), *xcp = xc.data_ptr<float>();
  float* gp = G ? gates.data_ptr<float>() : nullptr;
  at::parallel_for(0, B * T, 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(3 * I);
    float *qr = buf.data(), *kr = qr + I, *vr = kr + I;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      float* __restrict x = xcp + r * I;
      conv_row(a, b, t, x);
#pragma omp simd
      for (int64_t c = 0; c < I; ++c) x[c] = x[c] * sigmoid_approx(x[c]);
      bd_forward(a, a.band_q, x, qr);
      bd_forward(a, a.band_k, x, kr);
      const float* __restrict xm = a.up + r * 2 * I;
      bd_forward(a, a.band_v, xm, vr);
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t o = ((b * NH + h) * T + t) * DH;
        std::copy(qr + h * DH, qr + (h + 1) * DH, qp + o);
        std::copy(kr + h * DH, kr + (h + 1) * DH, kp + o);
        std::copy(vr + h * DH, vr + (h + 1) * DH, vp + o);
      }
      for (int64_t j = 0; j < G; ++j) {
        const float* __restrict wc = ga.w_c + j * I;
        const float* __restrict wm = ga.w_m + j * I;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < I; ++c) acc += wc[c] * x[c] + wm[c] * xm[c];
        gp[(b * G + j) * T + t] = acc + ga.b[j];
      }
    }
  });
  return {q, k, v, xc, gates};
}

// Gradients of the pre pass.  dq, dk, dv [B, NH, T, DH]; dxc [B, T, I] (x_c's gradient from the post pass);
// xc: the forward's x_c; dg [B, G, T] the gates' gradient (with the gate weights; or undefined).  d_up_out: the
// post pass's d_up [B, T, 2I] whose x_m half this pass fills (the z half is kept), or undefined (a new d_up with
// a zero z half).  Returns d_up, d_state (undefined without a state), d_conv_w [I, K], d_conv_b, d_w_q, d_w_k,
// d_w_v and, with gates, d_gate_w_c, d_gate_w_m [G, I], d_gate_b [G].
std::vector<at::Tensor> mlstm_pre_bwd(const at::Tensor& dq_in, const at::Tensor& dk_in, const at::Tensor& dv_in,
                                      const at::Tensor& dxc_in, const at::Tensor& xc_in, const at::Tensor& up_in,
                                      const std::optional<at::Tensor>& state_in, const at::Tensor& conv_w,
                                      const at::Tensor& conv_b, const at::Tensor& w_q, const at::Tensor& w_k,
                                      const at::Tensor& w_v, int64_t NH, const std::optional<at::Tensor>& dg_in,
                                      const std::optional<at::Tensor>& gate_w_c, const std::optional<at::Tensor>& gate_w_m,
                                      const std::optional<at::Tensor>& d_up_out) {
  PreInputs in = pre_inputs("mlstm_pre_bwd", up_in, state_in, conv_w, conv_b, w_q, w_k, w_v, NH);
  const PreArgs& a = in.args;
  const int64_t B = a.B, T = a.T, I = a.I, DH = a.DH, K = a.K, bs = a.bs, nd = a.reps();
  const GateArgs ga = gate_args("mlstm_pre_bwd", gate_w_c, gate_w_m, std::nullopt, I, false);
  const int64_t G = ga.G;
  at::Tensor dg;
  if (G) {
    TORCH_CHECK(dg_in.has_value() && dg_in->defined() && dg_in->scalar_type() == at::kFloat && dg_in->dim() == 3 &&
                    dg_in->size(0) == B && dg_in->size(1) == G && dg_in->size(2) == T,
                "lram::mlstm_pre_bwd: 'dg' must be float32 [", B, ", ", G, ", ", T, "] with the gate weights");
    dg = dg_in->contiguous();
  }
  const float* dgp = G ? dg.data_ptr<float>() : nullptr;
  for (const at::Tensor* t : {&dq_in, &dk_in, &dv_in})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 4 && t->size(0) == B && t->size(1) == NH && t->size(2) == T &&
                    t->size(3) == DH,
                "lram::mlstm_pre_bwd: 'dq', 'dk' and 'dv' must be float32 [", B, ", ", NH, ", ", T, ", ", DH, "]");
  TORCH_CHECK(dxc_in.sizes() == xc_in.sizes() && xc_in.size(0) == B && xc_in.size(1) == T && xc_in.size(2) == I,
              "lram::mlstm_pre_bwd: 'dxc' and 'xc' must be [", B, ", ", T, ", ", I, "]");
  at::Tensor dq = dq_in.contiguous(), dk = dk_in.contiguous(), dv = dv_in.contiguous(), dxc = dxc_in.contiguous();
  at::Tensor xc = xc_in.contiguous();
  auto opts = in.up.options();
  const bool into = d_up_out.has_value() && d_up_out->defined();
  if (into)
    TORCH_CHECK(d_up_out->scalar_type() == at::kFloat && d_up_out->is_contiguous() && d_up_out->dim() == 3 &&
                    d_up_out->size(0) == B && d_up_out->size(1) == T && d_up_out->size(2) == 2 * I,
                "lram::mlstm_pre_bwd: 'd_up_out' must be contiguous float32 [", B, ", ", T, ", ", 2 * I, "]");
  at::Tensor d_up = into ? *d_up_out : at::empty({B, T, 2 * I}, opts), dpre = at::empty({B, T, I}, opts);
  const float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const float *dxcp = dxc.data_ptr<float>(), *xcp = xc.data_ptr<float>();
  float *dup = d_up.data_ptr<float>(), *dprep = dpre.data_ptr<float>();
  const int64_t rows = B * T;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t per = (rows + threads - 1) / threads;
  // per thread: the q, k, v weight gradients in quad or band form [3, nd, I], d conv_w [K, I], d conv_b [I]
  const int64_t part = 3 * nd * I + (K + 1) * I;
  std::vector<float> partial(threads * part, 0.0f);
  // pass 1: per token, the block-diagonal products' gradients and the conv pre-activation's gradient
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(4 * I);
    float *dqr = buf.data(), *dkr = dqr + I, *dvr = dkr + I, *pre = dvr + I;
    for (int64_t th = t0; th < t1; ++th) {
      float* acc = partial.data() + th * part;
      float *dbq = acc, *dbk = dbq + nd * I, *dbv = dbk + nd * I;
      for (int64_t r = th * per; r < std::min(rows, (th + 1) * per); ++r) {
        const int64_t b = r / T, t = r % T;
        for (int64_t h = 0; h < NH; ++h) {
          const int64_t o = ((b * NH + h) * T + t) * DH;
          std::copy(dqp + o, dqp + o + DH, dqr + h * DH);
          std::copy(dkp + o, dkp + o + DH, dkr + h * DH);
          std::copy(dvp + o, dvp + o + DH, dvr + h * DH);
        }
        const float* __restrict x = xcp + r * I;
        const float* __restrict xm = a.up + r * 2 * I;
        float* __restrict dx = dprep + r * I;  // first d x_c, then d pre-activation
        std::copy(dxcp + r * I, dxcp + (r + 1) * I, dx);
        bd_backward(a, a.band_q, a.quadt_q, x, dqr, dx, dbq);
        bd_backward(a, a.band_k, a.quadt_k, x, dkr, dx, dbk);
        float* __restrict dxm = dup + r * 2 * I;
        for (int64_t c = 0; c < (into ? I : 2 * I); ++c) dxm[c] = 0.0f;
        bd_backward(a, a.band_v, a.quadt_v, xm, dvr, dxm, dbv);
        if (G) {  // the gates: d x_c += dg . W_c, d x_m += dg . W_m (their weights' gradients: products, below)
          gate_input_grads(dgp + b * G * T + t, T, G, ga.w_c, ga.w_m, I, dx, dxm);
        }
        // SiLU of the conv: d pre = d x_c * silu'(pre)
        conv_row(a, b, t, pre);
#pragma omp simd
        for (int64_t c = 0; c < I; ++c) {
          const float s = sigmoid_approx(pre[c]);
          dx[c] *= s * (1.0f + pre[c] * (1.0f - s));
        }
      }
    }
  });
  // pass 2: the conv's gradients: d cat(state, x_m)[u] = sum_k w_k dpre[u - k]; d w_k = sum_t dpre[t] xs[t + k]
  at::Tensor d_state = in.state.defined() ? at::empty_like(in.state) : at::Tensor();
  float* dsp = in.state.defined() ? d_state.data_ptr<float>() : nullptr;
  const int64_t U = T + K - 1;
  at::parallel_for(0, B * U, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / U, u = r % U;
      float* __restrict out = u >= K - 1 ? dup + (b * T + u - (K - 1)) * 2 * I : (dsp ? dsp + (b * (K - 1) + u) * I : nullptr);
      if (!out) continue;
      if (u < K - 1)
        for (int64_t c = 0; c < I; ++c) out[c] = 0.0f;
      for (int64_t kk = 0; kk < K; ++kk) {
        const int64_t t = u - kk;
        if (t < 0 || t >= T) continue;
        const float* __restrict g = dprep + (b * T + t) * I;
        const float* __restrict wk = a.conv_w + kk * I;
#pragma omp simd
        for (int64_t c = 0; c < I; ++c) out[c] += wk[c] * g[c];
      }
    }
  });
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      float* acc = partial.data() + th * part + 3 * nd * I;
      for (int64_t r = th * per; r < std::min(rows, (th + 1) * per); ++r) {
        const int64_t b = r / T, t = r % T;
        conv_grad_accumulate(dprep + r * I, [&](int64_t u) { return a.xm(b, u); }, t, K, I, acc);
      }
    }
  });
  // sum the per-thread partials
  for (int64_t th = 1; th < threads; ++th) {
    const float* src = partial.data() + th * part;
    float* dst = partial.data();
    for (int64_t j = 0; j < part; ++j) dst[j] += src[j];
  }
  const float* bands = partial.data();
  const int64_t nb = I / bs;
  at::Tensor d_wq = at::zeros({nb, bs, bs}, opts), d_wk = at::zeros_like(d_wq), d_wv = at::zeros_like(d_wq);
  float* dws[3] = {d_wq.data_ptr<float>(), d_wk.data_ptr<float>(), d_wv.data_ptr<float>()};
  for (int64_t w = 0; w < 3; ++w) {
    if (bs == 4)
      quad_to_weight(bands + w * nd * I, dws[w], nb);
    else
      band_to_weight(bands + w * nd * I, dws[w], nb, bs);
  }
  const float* conv = bands + 3 * nd * I;
  at::Tensor d_conv_w = at::from_blob(const_cast<float*>(conv), {K, I}, opts).t().contiguous();
  at::Tensor d_conv_b = at::from_blob(const_cast<float*>(conv + K * I), {I}, opts).clone();
  if (!G) return {d_up, d_state, d_conv_w, d_conv_b, d_wq, d_wk, d_wv};
  // the gate weights' gradients: dg^T over all tokens times x_c and x_m (skinny products, one read of each)
  at::Tensor dg_rows = dg.permute({1, 0, 2}).reshape({G, B * T});
  at::Tensor d_gwc = at::mm(dg_rows, xc.view({B * T, I}));
  at::Tensor d_gwm = at::mm(dg_rows, in.up.view({B * T, 2 * I}).narrow(1, 0, I));
  at::Tensor d_gb = dg_rows.sum(1);
  return {d_up, d_state, d_conv_w, d_conv_b, d_wq, d_wk, d_wv, d_gwc, d_gwm, d_gb};
}

// post: y = (LN_head(h) * w + skip * x_c) * SiLU(z).  h [B, NH, T, DH], xc [B, T, I], up [B, T, 2I] (z = up[..., I:]).
// Returns y [B, T, I] and the per-head mean and 1/std [B, T, NH] (for the backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlstm_post_fwd(const at::Tensor& h_in, const at::Tensor& xc_in,
                                                              const at::Tensor& up_in, const at::Tensor& w_in,
                                                              const at::Tensor& skip_in, double eps) {
  expect_float("mlstm_post_fwd", "h", h_in, 4);
  expect_float("mlstm_post_fwd", "xc", xc_in, 3);
  expect_float("mlstm_post_fwd", "up", up_in, 3);
  const int64_t B = h_in.size(0), NH = h_in.size(1), T = h_in.size(2), DH = h_in.size(3), I = NH * DH;
  TORCH_CHECK(xc_in.size(0) == B && xc_in.size(1) == T && xc_in.size(2) == I && up_in.size(0) == B && up_in.size(1) == T &&
                  up_in.size(2) == 2 * I,
              "lram::mlstm_post_fwd: 'xc' must be [", B, ", ", T, ", ", I, "] and 'up' [", B, ", ", T, ", ", 2 * I, "]");
  TORCH_CHECK(w_in.numel() == I && skip_in.numel() == I, "lram::mlstm_post_fwd: 'w' and 'skip' must have ", I, " entries");
  at::Tensor h = h_in.contiguous(), xc = xc_in.contiguous(), up = up_in.contiguous(), w = w_in.contiguous(), skip = skip_in.contiguous();
  auto opts = h.options();
  at::Tensor y = at::empty({B, T, I}, opts), mean = at::empty({B, T, NH}, opts), rstd = at::empty_like(mean);
  const float *hp = h.data_ptr<float>(), *xcp = xc.data_ptr<float>(), *upp = up.data_ptr<float>();
  const float *wp = w.data_ptr<float>(), *sp = skip.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, B * T, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      float* __restrict yr = yp + r * I;
      for (int64_t hh = 0; hh < NH; ++hh) {
        const float* __restrict hv = hp + ((b * NH + hh) * T + t) * DH;
        float mu = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mu)
        for (int64_t c = 0; c < DH; ++c) mu += hv[c];
        mu /= DH;
#pragma omp simd reduction(+ : var)
        for (int64_t c = 0; c < DH; ++c) var += (hv[c] - mu) * (hv[c] - mu);
        const float rs = 1.0f / std::sqrt(var / DH + feps);
        mp[r * NH + hh] = mu;
        rp[r * NH + hh] = rs;
#pragma omp simd
        for (int64_t c = 0; c < DH; ++c) yr[hh * DH + c] = (hv[c] - mu) * rs;
      }
      const float* __restrict x = xcp + r * I;
      const float* __restrict z = upp + r * 2 * I + I;
#pragma omp simd
      for (int64_t c = 0; c < I; ++c) yr[c] = (yr[c] * wp[c] + sp[c] * x[c]) * (z[c] * sigmoid_approx(z[c]));
    }
  });
  return {y, mean, rstd};
}

// Gradients of the post pass: returns dh [B, NH, T, DH], dxc [B, T, I], d_up [B, T, 2I] (the x_m half zero),
// dw [I], dskip [I].
std::vector<at::Tensor> mlstm_post_bwd(const at::Tensor& dy_in, const at::Tensor& h_in, const at::Tensor& xc_in,
                                       const at::Tensor& up_in, const at::Tensor& w_in, const at::Tensor& skip_in,
                                       const at::Tensor& mean_in, const at::Tensor& rstd_in) {
  expect_float("mlstm_post_bwd", "dy", dy_in, 3);
  expect_float("mlstm_post_bwd", "h", h_in, 4);
  const int64_t B = h_in.size(0), NH = h_in.size(1), T = h_in.size(2), DH = h_in.size(3), I = NH * DH;
  TORCH_CHECK(dy_in.size(0) == B && dy_in.size(1) == T && dy_in.size(2) == I && xc_in.sizes() == dy_in.sizes() &&
                  up_in.size(2) == 2 * I && mean_in.size(2) == NH && rstd_in.sizes() == mean_in.sizes(),
              "lram::mlstm_post_bwd: 'dy', 'xc' [B, T, I], 'up' [B, T, 2I], 'mean', 'rstd' [B, T, NH] expected");
  at::Tensor dy = dy_in.contiguous(), h = h_in.contiguous(), xc = xc_in.contiguous(), up = up_in.contiguous();
  at::Tensor w = w_in.contiguous(), skip = skip_in.contiguous(), mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  auto opts = h.options();
  at::Tensor dh = at::empty_like(h), dxc = at::empty_like(xc), d_up = at::empty({B, T, 2 * I}, opts);
  const float *dyp = dy.data_ptr<float>(), *hp = h.data_ptr<float>(), *xcp = xc.data_ptr<float>(), *upp = up.data_ptr<float>();
  const float *wp = w.data_ptr<float>(), *sp = skip.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dhp = dh.data_ptr<float>(), *dxcp = dxc.data_ptr<float>(), *dup = d_up.data_ptr<float>();
  const int64_t rows = B * T;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t per = (rows + threads - 1) / threads;
  std::vector<float> partial(threads * 2 * I, 0.0f);  // dw, dskip per thread
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(2 * I);
    float *hn = buf.data(), *dhn = hn + I;
    for (int64_t th = t0; th < t1; ++th) {
      float *dw = partial.data() + th * 2 * I, *dsk = dw + I;
      for (int64_t r = th * per; r < std::min(rows, (th + 1) * per); ++r) {
        const int64_t b = r / T, t = r % T;
        for (int64_t hh = 0; hh < NH; ++hh) {
          const float* __restrict hv = hp + ((b * NH + hh) * T + t) * DH;
          const float mu = mp[r * NH + hh], rs = rp[r * NH + hh];
#pragma omp simd
          for (int64_t c = 0; c < DH; ++c) hn[hh * DH + c] = (hv[c] - mu) * rs;
        }
        const float* __restrict g = dyp + r * I;
        const float* __restrict x = xcp + r * I;
        const float* __restrict z = upp + r * 2 * I + I;
        float* __restrict dz = dup + r * 2 * I + I;
        float* __restrict dx = dxcp + r * I;
        float* __restrict dxm = dup + r * 2 * I;
#pragma omp simd
        for (int64_t c = 0; c < I; ++c) {
          const float sg = sigmoid_approx(z[c]);
          const float a = hn[c] * wp[c] + sp[c] * x[c];
          dz[c] = g[c] * a * sg * (1.0f + z[c] * (1.0f - sg));
          const float da = g[c] * z[c] * sg;
          dsk[c] += da * x[c];
          dx[c] = da * sp[c];
          dw[c] += da * hn[c];
          dhn[c] = da * wp[c];
          dxm[c] = 0.0f;
        }
        for (int64_t hh = 0; hh < NH; ++hh) {  // layer-norm backward per head
          const float* __restrict hnh = hn + hh * DH;
          const float* __restrict dhh = dhn + hh * DH;
          float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
          for (int64_t c = 0; c < DH; ++c) {
            m1 += dhh[c];
            m2 += dhh[c] * hnh[c];
          }
          m1 /= DH;
          m2 /= DH;
          const float rs = rp[r * NH + hh];
          float* __restrict out = dhp + ((b * NH + hh) * T + t) * DH;
#pragma omp simd
          for (int64_t c = 0; c < DH; ++c) out[c] = rs * (dhh[c] - m1 - hnh[c] * m2);
        }
      }
    }
  });
  at::Tensor dw = at::zeros({I}, opts), dskip = at::zeros({I}, opts);
  float *dwp = dw.data_ptr<float>(), *dsp = dskip.data_ptr<float>();
  for (int64_t th = 0; th < threads; ++th) {
    const float* src = partial.data() + th * 2 * I;
    for (int64_t c = 0; c < I; ++c) {
      dwp[c] += src[c];
      dsp[c] += src[I + c];
    }
  }
  return {dh, dxc, d_up, dw, dskip};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lram, m) {
  m.def("block_diag_fwd(Tensor x, Tensor W) -> Tensor");
  m.def("block_diag_bwd(Tensor dy, Tensor x, Tensor W) -> (Tensor, Tensor)");
  m.def("causal_conv_fwd(Tensor x, Tensor weight, Tensor bias, Tensor? state, bool silu) -> Tensor");
  m.def("causal_conv_bwd(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor? state, bool silu) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  m.def("mlstm_gates_fwd(Tensor(a!) s_raw, Tensor b, Tensor i, float scale=1.0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("mlstm_gates_bwd(Tensor ds, Tensor s, Tensor d, Tensor dr, Tensor dm, Tensor arg, float scale=1.0) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("has_sgemm() -> bool", &has_sgemm);
  m.def("mlstm_cell_fwd(Tensor q, Tensor k, Tensor v, Tensor i, Tensor b, float scale, float eps, int tile) -> Tensor[]");
  m.def("mlstm_cell_bwd(Tensor dh, Tensor q, Tensor k, Tensor v, Tensor i, Tensor b, Tensor h, Tensor m, Tensor arg, "
        "Tensor r, Tensor den, float scale, float eps, int tile) -> Tensor[]");
  m.def("mlstm_pre_fwd(Tensor up, Tensor? state, Tensor conv_w, Tensor conv_b, Tensor w_q, Tensor w_k, Tensor w_v, "
        "int num_heads, Tensor? gate_w_c=None, Tensor? gate_w_m=None, Tensor? gate_b=None) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mlstm_pre_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dxc, Tensor xc, Tensor up, Tensor? state, Tensor conv_w, "
        "Tensor conv_b, Tensor w_q, Tensor w_k, Tensor w_v, int num_heads, Tensor? dg=None, Tensor? gate_w_c=None, "
        "Tensor? gate_w_m=None, Tensor(a!)? d_up_out=None) -> Tensor[]");
  m.def("mlstm_post_fwd(Tensor h, Tensor xc, Tensor up, Tensor w, Tensor skip, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("mlstm_post_bwd(Tensor dy, Tensor h, Tensor xc, Tensor up, Tensor w, Tensor skip, Tensor mean, Tensor rstd) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(lram, CPU, m) {
  m.impl("block_diag_fwd", &block_diag_fwd);
  m.impl("block_diag_bwd", &block_diag_bwd);
  m.impl("causal_conv_fwd", &causal_conv_fwd);
  m.impl("causal_conv_bwd", &causal_conv_bwd);
  m.impl("mlstm_gates_fwd", &mlstm_gates_fwd);
  m.impl("mlstm_gates_bwd", &mlstm_gates_bwd);
  m.impl("mlstm_cell_fwd", &mlstm_cell_fwd);
  m.impl("mlstm_cell_bwd", &mlstm_cell_bwd);
  m.impl("mlstm_pre_fwd", &mlstm_pre_fwd);
  m.impl("mlstm_pre_bwd", &mlstm_pre_bwd);
  m.impl("mlstm_post_fwd", &mlstm_post_fwd);
  m.impl("mlstm_post_bwd", &mlstm_post_bwd);
}
