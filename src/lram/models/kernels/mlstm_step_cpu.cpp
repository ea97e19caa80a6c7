// Fused CPU inference step of one mLSTM block (pre-norm, mLSTM layer, residual) for a few new tokens.
//
// The same arithmetic as lram.models.xlstm (XLSTMBlock on an mLSTM layer with the step kernel
// mlstm_step_inplace), written as one call so that a batch-1 environment step does not pay ~70 small
// PyTorch operations per block, and so that the matrix memory C is read and written exactly once:
// the read for the outputs (q C) and the update (decay C + sum_s k_s v_s^T) happen in the same pass.
// The two large projections go to ATen's matrix multiply (as W @ x^T for a few rows: W streamed once).
// The state tensors C, n, m and conv are updated in place.  float32, CPU, no autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <cmath>
#include <vector>

namespace {

// y[R, out] = x[R, in] @ W[out, in]^T for a few rows R: every weight row is streamed once, in memory order,
// by all threads (each a contiguous range of output rows), with the R input rows held in L1.  A plain
// streaming read like this runs near the memory bandwidth, where BLAS's few-column products reach ~70%.
template <int64_t R>
void few_rows_linear(const float* __restrict x, const float* __restrict W, float* __restrict y, int64_t in, int64_t out) {
  const int64_t grain = std::max<int64_t>(16, (1 << 16) / std::max<int64_t>(in, 1));  // >= 64K weights per thread
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const float* __restrict w = W + o * in;
      float acc[R];
      for (int64_t r = 0; r < R; ++r) {  // w comes from memory for r = 0 and from L1 after
        const float* __restrict xr = x + r * in;
        float a = 0.0f;
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < in; ++j) a += w[j] * xr[j];
        acc[r] = a;
      }
      for (int64_t r = 0; r < R; ++r) y[r * out + o] = acc[r];
    }
  });
}

constexpr int64_t FEW_ROWS = 8;

at::Tensor linear_rows(const at::Tensor& x_in, const at::Tensor& W_in) {
  const at::Tensor x = x_in.contiguous(), W = W_in.contiguous();
  const int64_t rows = x.size(0), in = x.size(1), out = W.size(0);
  if (rows > FEW_ROWS) return at::mm(x, W.t());
  at::Tensor y = at::empty({rows, out}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = W.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (rows) {
    case 1: few_rows_linear<1>(xp, wp, yp, in, out); break;
    case 2: few_rows_linear<2>(xp, wp, yp, in, out); break;
    case 3: few_rows_linear<3>(xp, wp, yp, in, out); break;
    case 4: few_rows_linear<4>(xp, wp, yp, in, out); break;
    case 5: few_rows_linear<5>(xp, wp, yp, in, out); break;
    case 6: few_rows_linear<6>(xp, wp, yp, in, out); break;
    case 7: few_rows_linear<7>(xp, wp, yp, in, out); break;
    default: few_rows_linear<8>(xp, wp, yp, in, out); break;
  }
  return y;
}

inline float logsigmoid(float x) { return std::min(x, 0.0f) - std::log1p(std::exp(-std::fabs(x))); }

// y = (x - mean) / sqrt(var + eps) * w   over n features (w may be null: no weight)
void layer_norm(const float* x, float* y, const float* w, int64_t n, float eps) {
  double mean = 0.0, var = 0.0;
#pragma omp simd reduction(+ : mean)
  for (int64_t j = 0; j < n; ++j) mean += x[j];
  mean /= n;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < n; ++j) var += (x[j] - mean) * (x[j] - mean);
  var /= n;
  const float mu = static_cast<float>(mean), rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
  if (w)
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mu) * rstd * w[j];
  else
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mu) * rstd;
}

// out[r, blk*BS + o] = sum_i w[blk, o, i] * x[r, blk*BS + i]   (block-diagonal projection, BS a constant)
template <int64_t BS>
void block_diagonal_fixed(const float* __restrict x, int64_t x_stride, const float* __restrict w, float* __restrict out,
                          int64_t out_stride, int64_t rows, int64_t features) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict xr = x + r * x_stride;
    float* __restrict orow = out + r * out_stride;
    for (int64_t b0 = 0; b0 < features; b0 += BS) {
      const float* __restrict wb = w + b0 * BS;  // block b0/BS starts at (b0/BS)*BS*BS
      float acc[BS] = {};
      for (int64_t i = 0; i < BS; ++i)
        for (int64_t o = 0; o < BS; ++o) acc[o] += wb[o * BS + i] * xr[b0 + i];
      for (int64_t o = 0; o < BS; ++o) orow[b0 + o] = acc[o];
    }
  }
}

void block_diagonal(const float* x, int64_t x_stride, const float* w, float* out, int64_t out_stride, int64_t rows,
                    int64_t features, int64_t bs) {
  if (bs == 4) return block_diagonal_fixed<4>(x, x_stride, w, out, out_stride, rows, features);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b0 = 0; b0 < features; b0 += bs)
      for (int64_t o = 0; o < bs; ++o) {
        float acc = 0.0f;
        for (int64_t i = 0; i < bs; ++i) acc += w[b0 * bs + o * bs + i] * x[r * x_stride + b0 + i];
        out[r * out_stride + b0 + o] = acc;
      }
}

// One pass over the matrix memory C [DH, DH] of one head: num[t] += qi[t] C  (outputs from the old memory),
// then C <- decay * C + sum_u kw[u] v[u]^T.  Row by row in memory order (what the hardware prefetchers
// stream best), in strips of W floats per row; each strip of C is loaded once, updated and stored, while
// the L output rows (num) and the L value rows (v) stay in L1.  L is a compile-time constant here.
constexpr int64_t W = 16;

template <int64_t L>
void c_pass_fixed(int64_t DH, float* __restrict C, const float* __restrict qi, const float* __restrict kw,
                  const float* __restrict v, float decay, float* __restrict num) {
  for (int64_t d = 0; d < DH; ++d) {
    float* __restrict row = C + d * DH;
    float a[L], w[L];
    for (int64_t t = 0; t < L; ++t) a[t] = qi[t * DH + d];
    for (int64_t u = 0; u < L; ++u) w[u] = kw[u * DH + d];
    for (int64_t e0 = 0; e0 < DH; e0 += W) {
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        const float cj = row[e0 + j];
        float nc = cj * decay;
        for (int64_t t = 0; t < L; ++t) num[t * DH + e0 + j] += a[t] * cj;
        for (int64_t u = 0; u < L; ++u) nc += w[u] * v[u * DH + e0 + j];
        row[e0 + j] = nc;
      }
    }
  }
}

void c_pass(int64_t L, int64_t DH, float* C, const float* qi, const float* kw, const float* v, float decay, float* num) {
  if (DH % W == 0) {
    switch (L) {
      case 1: return c_pass_fixed<1>(DH, C, qi, kw, v, decay, num);
      case 2: return c_pass_fixed<2>(DH, C, qi, kw, v, decay, num);
      case 3: return c_pass_fixed<3>(DH, C, qi, kw, v, decay, num);
      case 4: return c_pass_fixed<4>(DH, C, qi, kw, v, decay, num);
      default: break;
    }
  }
  for (int64_t d = 0; d < DH; ++d) {  // any L and DH: row by row (C rows stay in L1 across the t and u loops)
    float* Crow = C + d * DH;
    for (int64_t t = 0; t < L; ++t) {
      const float a = qi[t * DH + d];
      float* nt = num + t * DH;
#pragma omp simd
      for (int64_t e = 0; e < DH; ++e) nt[e] += a * Crow[e];
    }
#pragma omp simd
    for (int64_t e = 0; e < DH; ++e) Crow[e] *= decay;
    for (int64_t u = 0; u < L; ++u) {
      const float a = kw[u * DH + d];
      const float* vu = v + u * DH;
#pragma omp simd
      for (int64_t e = 0; e < DH; ++e) Crow[e] += a * vu[e];
    }
  }
}

// SiLU(causal depthwise conv) of L new rows per batch row (src: [B*L rows, stride src_stride], the first C
// channels), continuing from conv_state [B, K-1, C], which is replaced by the last K-1 inputs (in place).
at::Tensor causal_conv_silu(const float* src, int64_t src_stride, int64_t B, int64_t L, const at::Tensor& conv_w_in,
                            const at::Tensor& conv_b, at::Tensor& conv_state) {
  const int64_t C = conv_state.size(2), H = conv_state.size(1), K = H + 1;
  TORCH_CHECK(conv_w_in.numel() == C * K && conv_b.numel() == C, "lram: conv weight/bias do not match the conv state");
  at::Tensor out = at::empty({B * L, C}, conv_state.options());
  const at::Tensor cw_in = conv_w_in.contiguous();  // [C, 1, K]
  const float* cw_src = cw_in.data_ptr<float>();
  std::vector<float> cw(K * C);  // [K, C]: taps major, so that the loop over channels is contiguous
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) cw[j * C + c] = cw_src[c * K + j];
  const float* cb = conv_b.data_ptr<float>();
  float* cs = conv_state.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<const float*> rows(H + L);
  std::vector<float> new_state(H * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t u = 0; u < H; ++u) rows[u] = cs + (b * H + u) * C;
    for (int64_t t = 0; t < L; ++t) rows[H + t] = src + (b * L + t) * src_stride;
    for (int64_t t = 0; t < L; ++t) {
      float* o = op + (b * L + t) * C;
      for (int64_t c = 0; c < C; ++c) o[c] = cb[c];
      for (int64_t j = 0; j < K; ++j) {
        const float* x = rows[t + j];
        const float* wj = cw.data() + j * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += x[c] * wj[c];
      }
    }
    for (int64_t u = 0; u < H; ++u) std::copy(rows[L + u], rows[L + u] + C, new_state.begin() + u * C);
    std::copy(new_state.begin(), new_state.end(), cs + b * H * C);
  }
  return at::silu_(out);
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "lram::mlstm_block_step: ", what); }

// A weight or state argument: contiguous float32 with exactly these sizes (the kernels index raw memory).
void expect(const char* op, const char* name, const at::Tensor& t, std::initializer_list<int64_t> sizes) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes().equals(sizes), "lram::", op, ": ",
              name, " must be a contiguous float32 tensor of shape ", at::IntArrayRef(sizes), ", got ",
              t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (not contiguous)");
}

at::Tensor mlstm_block_step(const at::Tensor& x_in, const at::Tensor& norm_w, const at::Tensor& up_w,
                            const at::Tensor& conv_w_in, const at::Tensor& conv_b, const at::Tensor& q_w,
                            const at::Tensor& k_w, const at::Tensor& v_w, const at::Tensor& gate_w,
                            const at::Tensor& gate_b, const at::Tensor& out_norm_w, const at::Tensor& skip,
                            const at::Tensor& down_w, at::Tensor& C, at::Tensor& n, at::Tensor& m,
                            at::Tensor& conv_state, double norm_eps_d, double eps_d) {
  check(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat, "x must be float32 [B, L, D]");
  const int64_t B = x_in.size(0), L = x_in.size(1), D = x_in.size(2);
  const int64_t I = down_w.size(1), NH = C.size(1), DH = C.size(2), K = conv_w_in.size(-1), bs = q_w.size(1);
  const int64_t R = B * L, H = K - 1;
  const float norm_eps = static_cast<float>(norm_eps_d), eps = static_cast<float>(eps_d);
  check(NH * DH == I && I % bs == 0, "inconsistent shapes");
  const char* op = "mlstm_block_step";
  expect(op, "norm_w", norm_w, {D});
  expect(op, "up_w", up_w, {2 * I, D});
  expect(op, "conv_w", conv_w_in, {I, 1, K});
  expect(op, "conv_b", conv_b, {I});
  for (const at::Tensor* w : {&q_w, &k_w, &v_w}) expect(op, "q_w/k_w/v_w", *w, {I / bs, bs, bs});
  expect(op, "gate_w", gate_w, {2 * NH, 3 * I});
  expect(op, "gate_b", gate_b, {2 * NH});
  expect(op, "out_norm_w", out_norm_w, {I});
  expect(op, "skip", skip, {I});
  expect(op, "down_w", down_w, {D, I});
  expect(op, "C", C, {B, NH, DH, DH});
  expect(op, "n", n, {B, NH, DH});
  expect(op, "m", m, {B, NH});
  expect(op, "conv_state", conv_state, {B, H, I});

  const at::Tensor x = x_in.contiguous();
  const float* xp = x.data_ptr<float>();
  // 1. pre-norm
  at::Tensor xn = at::empty({R, D}, x.options());
  {
    const float* w = norm_w.data_ptr<float>();
    float* o = xn.data_ptr<float>();
    for (int64_t r = 0; r < R; ++r) layer_norm(xp + r * D, o + r * D, w, D, norm_eps);
  }
  // 2. up-projection: [x_m | z]
  const at::Tensor up = linear_rows(xn, up_w);  // [R, 2I]
  const float* upp = up.data_ptr<float>();
  // 3. causal depthwise conv over [conv_state ; x_m] + SiLU, and the new conv_state
  const at::Tensor xconv = causal_conv_silu(upp, 2 * I, B, L, conv_w_in, conv_b, conv_state);
  // 4. q, k from the conv branch, v from x_m (block-diagonal); gates from [q, k, v]
  at::Tensor qkv = at::empty({R, 3 * I}, x.options());
  float* qkvp = qkv.data_ptr<float>();
  const float* xcp = xconv.data_ptr<float>();
  block_diagonal(xcp, I, q_w.data_ptr<float>(), qkvp, 3 * I, R, I, bs);
  block_diagonal(xcp, I, k_w.data_ptr<float>(), qkvp + I, 3 * I, R, I, bs);
  block_diagonal(upp, 2 * I, v_w.data_ptr<float>(), qkvp + 2 * I, 3 * I, R, I, bs);
  std::vector<float> gates(R * 2 * NH);
  {
    const float* gw = gate_w.data_ptr<float>();
    const float* gb = gate_b.data_ptr<float>();
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < 2 * NH; ++j) {
        const float* w = gw + j * 3 * I;
        const float* v = qkvp + r * 3 * I;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < 3 * I; ++c) acc += w[c] * v[c];
        gates[r * 2 * NH + j] = acc + gb[j];
      }
  }
  // 5. the mLSTM cell per (row, head): one pass over C for both the outputs and the update
  at::Tensor hbuf = at::empty({R, I}, x.options());
  float* hp = hbuf.data_ptr<float>();
  float* Cp = C.data_ptr<float>();
  float* np_ = n.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  const float kscale = 1.0f / std::sqrt(static_cast<float>(DH));
  at::parallel_for(0, B * NH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(L * DH), k(L * DH), v(L * DH), kw(L * DH), qi(L * DH), num(L * DH);
    std::vector<float> bc(L), ig(L), mt(L), inter(L), den(L), s(L * L);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / NH, h = bh % NH;
      float* Cm = Cp + bh * DH * DH;
      float* nv = np_ + bh * DH;
      const float m0 = mp[bh];
      float cum = 0.0f;
      for (int64_t t = 0; t < L; ++t) {
        const float* row = qkvp + (b * L + t) * 3 * I + h * DH;
        for (int64_t d = 0; d < DH; ++d) {
          q[t * DH + d] = row[d];
          k[t * DH + d] = row[I + d] * kscale;
          v[t * DH + d] = row[2 * I + d];
        }
        ig[t] = gates[(b * L + t) * 2 * NH + h];
        cum += logsigmoid(gates[(b * L + t) * 2 * NH + NH + h]);
        bc[t] = cum;
      }
      // outputs: intra-chunk part and the stabilisers
      for (int64_t t = 0; t < L; ++t) {
        float mx = bc[t] + m0;  // log_inter
        for (int64_t u = 0; u <= t; ++u) mx = std::max(mx, bc[t] - bc[u] + ig[u]);
        mt[t] = mx;
        inter[t] = std::exp(bc[t] + m0 - mx);
        float dsum = 0.0f;
        float* nt = num.data() + t * DH;
        std::fill(nt, nt + DH, 0.0f);
        for (int64_t u = 0; u <= t; ++u) {
          float qk = 0.0f;
#pragma omp simd reduction(+ : qk)
          for (int64_t d = 0; d < DH; ++d) qk += q[t * DH + d] * k[u * DH + d];
          const float sv = qk * std::exp(bc[t] - bc[u] + ig[u] - mx);
          dsum += sv;
          const float* vu = v.data() + u * DH;
          for (int64_t e = 0; e < DH; ++e) nt[e] += sv * vu[e];
        }
        float qn = 0.0f;
        for (int64_t d = 0; d < DH; ++d) {
          qi[t * DH + d] = q[t * DH + d] * inter[t];
          qn += qi[t * DH + d] * nv[d];
        }
        den[t] = dsum + qn;
      }
      // state update weights
      const float g = bc[L - 1];
      float m_new = g + m0;
      for (int64_t u = 0; u < L; ++u) m_new = std::max(m_new, g - bc[u] + ig[u]);
      for (int64_t u = 0; u < L; ++u) {
        const float w = std::exp(g - bc[u] + ig[u] - m_new);
        for (int64_t d = 0; d < DH; ++d) kw[u * DH + d] = k[u * DH + d] * w;
      }
      const float decay = std::exp(g + m0 - m_new);
      // the single pass over C: num += (q * inter) C_old;  C <- decay C + sum_u kw_u v_u^T
      c_pass(L, DH, Cm, qi.data(), kw.data(), v.data(), decay, num.data());
      for (int64_t d = 0; d < DH; ++d) {
        float acc = nv[d] * decay;
        for (int64_t u = 0; u < L; ++u) acc += kw[u * DH + d];
        nv[d] = acc;
      }
      mp[bh] = m_new;
      for (int64_t t = 0; t < L; ++t) {
        const float denom = std::max(std::fabs(den[t]), std::exp(-mt[t])) + eps;
        float* out = hp + (b * L + t) * I + h * DH;
        for (int64_t e = 0; e < DH; ++e) out[e] = num[t * DH + e] / denom;
      }
    }
  });
  // 6. multi-head norm, learnable skip, output gate
  {
    const float* onw = out_norm_w.data_ptr<float>();
    const float* sk = skip.data_ptr<float>();
    const at::Tensor gate = at::silu(up.narrow(1, I, I));
    const float* zs = gate.data_ptr<float>();
    for (int64_t r = 0; r < R; ++r) {
      float* hr = hp + r * I;
      for (int64_t h = 0; h < NH; ++h) layer_norm(hr + h * DH, hr + h * DH, nullptr, DH, norm_eps);
      const float* xc = xcp + r * I;
      const float* z = zs + r * I;
#pragma omp simd
      for (int64_t c = 0; c < I; ++c) hr[c] = (hr[c] * onw[c] + sk[c] * xc[c]) * z[c];
    }
  }
  // 7. down-projection and residual
  at::Tensor y = linear_rows(hbuf, down_w);
  return (y.view({B, L, D}) + x);
}

// One Mamba-1 block (RMSNorm, mixer, residual) on a few new tokens: the same function as
// lram.models.mamba.MambaBlock.step, with conv_state [B, K-1, E] and h [B, E, N] updated in place.
at::Tensor mamba_block_step(const at::Tensor& x_in, const at::Tensor& norm_w, const at::Tensor& in_w,
                            const at::Tensor& conv_w, const at::Tensor& conv_b, const at::Tensor& xproj_w,
                            const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_log,
                            const at::Tensor& D_skip, const at::Tensor& out_w, at::Tensor& conv_state, at::Tensor& h,
                            double norm_eps) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat, "lram::mamba_block_step: x must be float32 [B, L, D]");
  const int64_t B = x_in.size(0), L = x_in.size(1), Dm = x_in.size(2);
  const int64_t E = out_w.size(1), N = A_log.size(1), Rdt = dt_w.size(1), R = B * L;
  const int64_t K = conv_w.size(-1);
  const char* op = "mamba_block_step";
  expect(op, "norm_w", norm_w, {Dm});
  expect(op, "in_w", in_w, {2 * E, Dm});
  expect(op, "conv_w", conv_w, {E, 1, K});
  expect(op, "conv_b", conv_b, {E});
  expect(op, "xproj_w", xproj_w, {Rdt + 2 * N, E});
  expect(op, "dt_w", dt_w, {E, Rdt});
  expect(op, "dt_b", dt_b, {E});
  expect(op, "A_log", A_log, {E, N});
  expect(op, "D", D_skip, {E});
  expect(op, "out_w", out_w, {Dm, E});
  expect(op, "conv_state", conv_state, {B, K - 1, E});
  expect(op, "h", h, {B, E, N});
  const at::Tensor x = x_in.contiguous();
  const float* xp = x.data_ptr<float>();
  // RMSNorm
  at::Tensor xn = at::empty({R, Dm}, x.options());
  {
    const float* w = norm_w.data_ptr<float>();
    float* o = xn.data_ptr<float>();
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = xp + r * Dm;
      double ss = 0.0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < Dm; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const float rs = static_cast<float>(1.0 / std::sqrt(ss / Dm + norm_eps));
      for (int64_t j = 0; j < Dm; ++j) o[r * Dm + j] = xr[j] * rs * w[j];
    }
  }
  const at::Tensor xz = linear_rows(xn, in_w);  // [R, 2E]: x | z
  const float* xzp = xz.data_ptr<float>();
  const at::Tensor xc = causal_conv_silu(xzp, 2 * E, B, L, conv_w, conv_b, conv_state);  // [R, E]
  const at::Tensor dbc = linear_rows(xc, xproj_w);  // [R, Rdt + 2N]: dt | B | C
  const at::Tensor delta = at::softplus(linear_rows(dbc.narrow(1, 0, Rdt), dt_w).add_(dt_b));  // [R, E]
  const at::Tensor A = at::exp(A_log).neg_();  // [E, N]
  const at::Tensor dA = at::exp(delta.unsqueeze(-1) * A);  // [R, E, N]
  const at::Tensor gate = at::silu(xz.narrow(1, E, E));  // [R, E]
  at::Tensor y = at::empty({R, E}, x.options());
  const float* dbcp = dbc.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  const float* dAp = dA.data_ptr<float>();
  const float* gp = gate.data_ptr<float>();
  const float* xcp = xc.data_ptr<float>();
  const float* Dp = D_skip.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const int64_t dstride = Rdt + 2 * N;
  at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < L; ++t) {
        const int64_t r = b * L + t;
        const float* Bm = dbcp + r * dstride + Rdt;
        const float* Cm = Bm + N;
        for (int64_t e = begin; e < end; ++e) {
          float* he = hp + (b * E + e) * N;
          const float* dAe = dAp + (r * E + e) * N;
          const float dx = dp[r * E + e] * xcp[r * E + e];
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const float hn = dAe[n] * he[n] + dx * Bm[n];
            he[n] = hn;
            acc += Cm[n] * hn;
          }
          yp[r * E + e] = (acc + Dp[e] * xcp[r * E + e]) * gp[r * E + e];
        }
      }
  });
  return linear_rows(y, out_w).view({B, L, Dm}) + x;
}

// The few-rows linear layer as an op (y = x W^T + b), for the other projections of an inference step.
at::Tensor few_rows_linear_op(const at::Tensor& x, const at::Tensor& W, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && W.scalar_type() == at::kFloat && W.dim() == 2 && x.size(-1) == W.size(1),
              "lram::linear_rows: float32 x [..., in] and W [out, in] expected");
  auto sizes = x.sizes().vec();
  sizes.back() = W.size(0);
  at::Tensor y = linear_rows(x.reshape({-1, W.size(1)}), W);
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  return y.view(sizes);
}

}  // namespace

TORCH_LIBRARY(lram, m) {
  m.def("linear_rows(Tensor x, Tensor W, Tensor? bias) -> Tensor");
  m.def(
      "mamba_block_step(Tensor x, Tensor norm_w, Tensor in_w, Tensor conv_w, Tensor conv_b, Tensor xproj_w, "
      "Tensor dt_w, Tensor dt_b, Tensor A_log, Tensor D, Tensor out_w, Tensor(a!) conv_state, Tensor(b!) h, "
      "float norm_eps) -> Tensor");
  m.def(
      "mlstm_block_step(Tensor x, Tensor norm_w, Tensor up_w, Tensor conv_w, Tensor conv_b, Tensor q_w, "
      "Tensor k_w, Tensor v_w, Tensor gate_w, Tensor gate_b, Tensor out_norm_w, Tensor skip, Tensor down_w, "
      "Tensor(a!) C, Tensor(b!) n, Tensor(c!) m, Tensor(d!) conv_state, float norm_eps, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(lram, CPU, m) {
  m.impl("mlstm_block_step", &mlstm_block_step);
  m.impl("linear_rows", &few_rows_linear_op);
  m.impl("mamba_block_step", &mamba_block_step);
}
