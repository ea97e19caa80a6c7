// Fused CPU training scan of the sLSTM cell: forward and backward of lram.models.xlstm.slstm_scan.
//
// The recurrence of every (batch row, head) pair is independent of the others, so each thread owns a few
// heads x row chunks and runs their whole time loop with no synchronisation between steps.  The recurrent
// product h_{t-1} R (per head [rows, DH] x [DH, 4 DH]) is a register-blocked loop with R in cache; the
// backward scan runs the same loop on R^T for dh_{t-1}, and the weight gradient dR = sum_t h_{t-1}^T dpre_t
// is one batched matrix multiply after the scan.  The forward saves the gate activations and the cell
// states of every step, so the backward needs no transcendental function.  float32, CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// ------------------------------------------------------------------ small matrix product
// out[r, j] = sum_k a[r * lda + k] * b[k * ldb + j] for r < ROWS, j < NB: the ROWS x NB accumulators stay
// in registers while b's rows stream from cache.
template <int ROWS, int NB>
inline void mm_tile(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb,
                    float* __restrict out, int64_t ldo, int64_t K) {
  float acc[ROWS][NB];
  for (int r = 0; r < ROWS; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float* __restrict bk = b + k * ldb;
    for (int r = 0; r < ROWS; ++r) {
      const float av = a[r * lda + k];
#pragma omp simd
      for (int j = 0; j < NB; ++j) acc[r][j] += av * bk[j];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int j = 0; j < NB; ++j) out[r * ldo + j] = acc[r][j];
}

// the same for a last column block of width < 16
template <int ROWS>
inline void mm_tile_tail(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb,
                         float* __restrict out, int64_t ldo, int64_t K, int64_t width) {
  float acc[ROWS][16] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* __restrict bk = b + k * ldb;
    for (int r = 0; r < ROWS; ++r) {
      const float av = a[r * lda + k];
      for (int64_t j = 0; j < width; ++j) acc[r][j] += av * bk[j];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int64_t j = 0; j < width; ++j) out[r * ldo + j] = acc[r][j];
}

template <int ROWS>
void mm_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo, int64_t K, int64_t N) {
  int64_t j = 0;
  for (; j + 64 <= N; j += 64) mm_tile<ROWS, 64>(a, lda, b + j, ldb, out + j, ldo, K);
  if (j + 32 <= N) mm_tile<ROWS, 32>(a, lda, b + j, ldb, out + j, ldo, K), j += 32;
  if (j + 16 <= N) mm_tile<ROWS, 16>(a, lda, b + j, ldb, out + j, ldo, K), j += 16;
  if (j < N) mm_tile_tail<ROWS>(a, lda, b + j, ldb, out + j, ldo, K, N - j);
}

// out[rows, N] = a[rows, K] @ b[K, N] (row strides lda, ldb, ldo)
void small_mm(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo, int64_t rows,
              int64_t K, int64_t N) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) mm_rows<4>(a + r * lda, lda, b, ldb, out + r * ldo, ldo, K, N);
  switch (rows - r) {
    case 3: mm_rows<3>(a + r * lda, lda, b, ldb, out + r * ldo, ldo, K, N); break;
    case 2: mm_rows<2>(a + r * lda, lda, b, ldb, out + r * ldo, ldo, K, N); break;
    case 1: mm_rows<1>(a + r * lda, lda, b, ldb, out + r * ldo, ldo, K, N); break;
    default: break;
  }
}

// ------------------------------------------------------------------ helpers
// Vectorisable float32 elementwise functions (plain arithmetic, so `omp simd` loops over them compile to
// SIMD code; glibc's scalar expf / log1pf / tanhf would dominate the scan's time).  Within a few ulp.
#if defined(__GNUC__)
#define LRAM_INLINE inline __attribute__((always_inline))
#else
#define LRAM_INLINE inline
#endif

// the bits of a float as an int and back (__builtin_bit_cast where the compiler has it: it vectorises)
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define LRAM_HAS_BIT_CAST 1
#endif
#endif
template <class To, class From>
LRAM_INLINE To bits_as(From x) {
  static_assert(sizeof(To) == sizeof(From));
#ifdef LRAM_HAS_BIT_CAST
  return __builtin_bit_cast(To, x);
#else
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
#endif
}

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 7 (error < 6e-9),
// 2^n from the exponent bits; 0 below -87 (where the result would be denormal) and +inf above 88.
// n = round(x / ln2) by the 1.5 * 2^23 trick (no floor call: that keeps the loops vectorisable).
LRAM_INLINE float fexp(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float t = xc * 1.44269504088896341f + magic;
  const float nf = t - magic;
  const float r = (xc - nf * 0.693359375f) + nf * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t n = bits_as<int32_t>(t) - bits_as<int32_t>(magic);
  const float scale = bits_as<float>((n + 127) << 23);
  const float y = p * scale;
  return x < -87.0f ? 0.0f : (x > 88.0f ? INFINITY : y);
}

// log(1 + x) for x in [0, 1]: log(u) of u = 1 + x by the series 2 atanh(s), s = (m - 1) / (m + 1) on the
// mantissa m in [sqrt(1/2), sqrt(2)), plus the first-order correction for the rounding of 1 + x.
LRAM_INLINE float flog1p_unit(float x) {
  const float u = 1.0f + x;
  const bool up = u > 1.41421356f;
  const float mant = up ? 0.5f * u : u, e = up ? 1.0f : 0.0f;
  const float sv = (mant - 1.0f) / (mant + 1.0f), s2 = sv * sv;
  float p = 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const float log_u = e * 0.693359375f + (2.0f * sv * p - e * 2.12194440e-4f);
  return log_u + (x - (u - 1.0f)) / u;
}

// tanh(z): its odd Taylor polynomial (through z^13) for |z| < 0.45, else 1 - 2 / (exp(2 |z|) + 1)
LRAM_INLINE float ftanh(float z) {
  const float a = std::fabs(z), z2 = z * z;
  float q = 21844.0f / 6081075.0f;
  q = q * z2 - 1382.0f / 155925.0f;
  q = q * z2 + 62.0f / 2835.0f;
  q = q * z2 - 17.0f / 315.0f;
  q = q * z2 + 2.0f / 15.0f;
  q = q * z2 - 1.0f / 3.0f;
  const float small = z + z * z2 * q;
  const float large = 1.0f - 2.0f / (fexp(2.0f * a) + 1.0f);
  return a < 0.45f ? small : (z < 0.0f ? -large : large);
}

LRAM_INLINE float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }

// saved gate quantities per (row, step, head), each DH wide: exp input gate, exp forget gate, tanh(z),
// sigmoid(o), d logsigmoid(f) / df, and the share of the stabiliser's gradient that goes to the input gate
// (1, 0, or 1/2 on a tie: the gradient torch.maximum gives)
constexpr int64_t G_I = 0, G_F = 1, G_Z = 2, G_O = 3, G_LSF = 4, G_W = 5, NG = 6;

// One step of one (row, head): pre-activations w[g * ws + d] + y[g * DH + d] (w: the gate inputs, y: the
// recurrent product), cell state c, n, m [DH] updated in place, h written to hout; with SAVE also the gate
// quantities g [NG, DH] and the new c, n (cs, ns).  The arithmetic of slstm_scan, in its order.
template <bool SAVE>
void forward_row(int64_t DH, int64_t ws, const float* __restrict w, const float* __restrict y, float* __restrict c,
                 float* __restrict n, float* __restrict m, float* __restrict hout, float* __restrict g,
                 float* __restrict cs, float* __restrict ns) {
#pragma omp simd
  for (int64_t d = 0; d < DH; ++d) {
    const float ir = w[d] + y[d], fr = w[ws + d] + y[DH + d];
    const float zr = w[2 * ws + d] + y[2 * DH + d], orr = w[3 * ws + d] + y[3 * DH + d];
    const float ez = fexp(-std::fabs(fr));
    const float lfm = m[d] + (std::min(fr, 0.0f) - flog1p_unit(ez));  // m_prev + logsigmoid(fr)
    const float mn = std::max(ir, lfm);
    const float ig = fexp(ir - mn), fg = fexp(lfm - mn);
    const float tz = ftanh(zr), so = fsigmoid(orr);
    const float cn = fg * c[d] + ig * tz, nn = fg * n[d] + ig;
    hout[d] = so * cn / nn;
    c[d] = cn, n[d] = nn, m[d] = mn;
    if (SAVE) {
      g[G_I * DH + d] = ig, g[G_F * DH + d] = fg, g[G_Z * DH + d] = tz, g[G_O * DH + d] = so;
      g[G_LSF * DH + d] = fr < 0.0f ? 1.0f / (1.0f + ez) : ez / (1.0f + ez);  // d logsigmoid(fr) / dfr
      g[G_W * DH + d] = ir > lfm ? 1.0f : (ir < lfm ? 0.0f : 0.5f);
      cs[d] = cn, ns[d] = nn;
    }
  }
}

// The backward of forward_row for one step of one (row, head): the carried gradients dh, dc, dn, dm [DH]
// (of h, c, n, m after the step; dh without the output's own gradient gh, which may be null) become those
// of the state before the step (dh: only its part through h's outputs; the R^T product adds the rest);
// the pre-activations' gradients go to dw[g * ws + d] and dp[g * DH + d].  Autograd's formulas, op by op.
void backward_row(int64_t DH, int64_t ws, const float* __restrict gh, const float* __restrict g,
                  const float* __restrict h, const float* __restrict c, const float* __restrict n,
                  const float* __restrict cprev, const float* __restrict nprev, float* __restrict dh,
                  float* __restrict dc, float* __restrict dn, float* __restrict dm, float* __restrict dw,
                  float* __restrict dp) {
#pragma omp simd
  for (int64_t d = 0; d < DH; ++d) {
    const float dht = dh[d] + (gh ? gh[d] : 0.0f);
    const float ig = g[G_I * DH + d], fg = g[G_F * DH + d], tz = g[G_Z * DH + d], so = g[G_O * DH + d];
    // h = (so * c) / n
    const float da = dht / n[d];
    const float dnn = dn[d] - dht * (h[d] / n[d]);
    const float dcn = dc[d] + da * so;
    const float dor = da * c[d] * (1.0f - so) * so;
    // c = fg c_prev + ig tz,  n = fg n_prev + ig
    const float dfg = dcn * cprev[d] + dnn * nprev[d];
    const float dig = dcn * tz + dnn;
    const float dzr = dcn * ig * (1.0f - tz * tz);
    // ig = exp(ir - m_new), fg = exp(lfm - m_new), m_new = max(ir, lfm), lfm = m_prev + logsigmoid(fr)
    const float di_e = dig * ig, df_e = dfg * fg;
    const float dmn = dm[d] - di_e - df_e;
    const float wi = g[G_W * DH + d];
    const float dir = di_e + wi * dmn;
    const float dlfm = df_e + (1.0f - wi) * dmn;
    const float dfr = dlfm * g[G_LSF * DH + d];
    dw[d] = dir, dw[ws + d] = dfr, dw[2 * ws + d] = dzr, dw[3 * ws + d] = dor;
    dp[d] = dir, dp[DH + d] = dfr, dp[2 * DH + d] = dzr, dp[3 * DH + d] = dor;
    dc[d] = dcn * fg, dn[d] = dnn * fg, dm[d] = dlfm;
  }
}

void check_float_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": argument '", name, "' is undefined");
  TORCH_CHECK(t.device().is_cpu(), op, ": argument '", name, "' must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": argument '", name, "' must be float32, got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, const char* op, const char* name, at::IntArrayRef shape, const char* dims) {
  check_float_cpu(t, op, name);
  TORCH_CHECK(t.sizes() == shape, op, ": argument '", name, "' must have shape ", dims, " = ", shape, ", got ",
              t.sizes());
}

// the (head, row chunk) work items: enough for all threads; each runs its whole time loop on its own
struct Items {
  int64_t chunks, rows_per_chunk, count;
  Items(int64_t B, int64_t NH) {
    chunks = std::max<int64_t>(1, (B + 7) / 8);
    const int64_t threads = at::get_num_threads();
    while (NH * chunks < threads && chunks < B) ++chunks;
    rows_per_chunk = B ? (B + chunks - 1) / chunks : 0;
    chunks = rows_per_chunk ? (B + rows_per_chunk - 1) / rows_per_chunk : 0;
    count = NH * chunks;
  }
};

// Run work(item, scratch) for every item on the intra-op threads, handing the items out one at a time (a
// thread that the OS holds back on a busy machine does not hold up the items it would have had in a static
// split); make_scratch() gives each thread its buffers.
template <class Scratch, class MakeScratch, class Work>
void for_each_item(int64_t count, const MakeScratch& make_scratch, const Work& work) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    Scratch scratch = make_scratch();
    for (int64_t it = next.fetch_add(1); it < count; it = next.fetch_add(1)) work(it, scratch);
  });
}

// Prefetch n floats from p (write: for a store) into cache: the scan touches a few hundred bytes per
// (row, head, step), scattered over tensors of megabytes, and would otherwise wait on every load.
LRAM_INLINE void prefetch(const float* p, int64_t n, bool write = false) {
#if defined(__GNUC__)
  for (int64_t i = 0; i < n; i += 16) {
    if (write)
      __builtin_prefetch(p + i, 1, 3);
    else
      __builtin_prefetch(p + i, 0, 3);
  }
#else
  (void)p, (void)n, (void)write;
#endif
}
constexpr int64_t AHEAD = 2;  // steps ahead to prefetch

// ------------------------------------------------------------------ forward
// wx [B, T, 4, NH, DH] gate inputs (i, f, z, o), R [NH, DH, 4 DH], states h0/c0/n0/m0 [B, NH, DH].
// Returns hs [B, T, NH, DH], the final h, c, n, m [B, NH, DH], and (when save) what the backward reads:
// gates [B, T, NH, 6, DH] and the cell states cs, ns [B, T, NH, DH] after every step (else empty tensors).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slstm_scan_fwd(const at::Tensor& wx_in, const at::Tensor& R_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
               const at::Tensor& n0_in, const at::Tensor& m0_in, bool save) {
  const char* op = "slstm_scan_fwd";
  check_float_cpu(wx_in, op, "wx");
  TORCH_CHECK(wx_in.dim() == 5 && wx_in.size(2) == 4, op, ": argument 'wx' must have shape [B, T, 4, NH, DH], got ",
              wx_in.sizes());
  const int64_t B = wx_in.size(0), T = wx_in.size(1), NH = wx_in.size(3), DH = wx_in.size(4), G4 = 4 * DH;
  check_shape(R_in, op, "R", {NH, DH, G4}, "[NH, DH, 4 * DH]");
  for (auto [t, name] : {std::pair{&h0_in, "h0"}, {&c0_in, "c0"}, {&n0_in, "n0"}, {&m0_in, "m0"}})
    check_shape(*t, op, name, {B, NH, DH}, "[B, NH, DH]");
  const at::Tensor wx = wx_in.contiguous(), R = R_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous(),
                   n0 = n0_in.contiguous(), m0 = m0_in.contiguous();
  const auto opt = wx.options();
  at::Tensor hs = at::empty({B, T, NH, DH}, opt);
  at::Tensor h = at::empty({B, NH, DH}, opt), c = at::empty({B, NH, DH}, opt), n = at::empty({B, NH, DH}, opt),
             m = at::empty({B, NH, DH}, opt);
  at::Tensor gates = save ? at::empty({B, T, NH, NG, DH}, opt) : at::empty({0}, opt);
  at::Tensor cs = save ? at::empty({B, T, NH, DH}, opt) : at::empty({0}, opt);
  at::Tensor ns = save ? at::empty({B, T, NH, DH}, opt) : at::empty({0}, opt);

  const float* wxp = wx.data_ptr<float>();
  const float* Rp = R.data_ptr<float>();
  const float *h0p = h0.data_ptr<float>(), *c0p = c0.data_ptr<float>(), *n0p = n0.data_ptr<float>(),
              *m0p = m0.data_ptr<float>();
  float* hsp = hs.data_ptr<float>();
  float *hp = h.data_ptr<float>(), *cp = c.data_ptr<float>(), *np_ = n.data_ptr<float>(), *mp = m.data_ptr<float>();
  float* gp = save ? gates.data_ptr<float>() : nullptr;
  float* csp = save ? cs.data_ptr<float>() : nullptr;
  float* nsp = save ? ns.data_ptr<float>() : nullptr;
  const Items items(B, NH);

  using Buffers = std::array<std::vector<float>, 4>;  // recurrent product, c, n, m of one item's rows
  auto buffers = [&] {
    const int64_t rc = items.rows_per_chunk;
    return Buffers{std::vector<float>(rc * G4), std::vector<float>(rc * DH), std::vector<float>(rc * DH),
                   std::vector<float>(rc * DH)};
  };
  for_each_item<Buffers>(items.count, buffers, [&](int64_t it, Buffers& buf) {
    auto &ry = buf[0], &cb = buf[1], &nb = buf[2], &mb = buf[3];
    const int64_t k = it / items.chunks, r0 = (it % items.chunks) * items.rows_per_chunk;
    const int64_t rows = std::min(items.rows_per_chunk, B - r0);
    const float* Rk = Rp + k * DH * G4;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = ((r0 + r) * NH + k) * DH;
      std::copy(c0p + s, c0p + s + DH, cb.data() + r * DH);
      std::copy(n0p + s, n0p + s + DH, nb.data() + r * DH);
      std::copy(m0p + s, m0p + s + DH, mb.data() + r * DH);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* hprev = t == 0 ? h0p + (r0 * NH + k) * DH : hsp + ((r0 * T + t - 1) * NH + k) * DH;
      if (t + AHEAD < T)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t bt = (r0 + r) * T + t + AHEAD, s = (bt * NH + k) * DH;
          for (int64_t g = 0; g < 4; ++g) prefetch(wxp + ((bt * 4 + g) * NH + k) * DH, DH);
          prefetch(hsp + s, DH, true);
          if (save) prefetch(gp + s * NG, NG * DH, true), prefetch(csp + s, DH, true), prefetch(nsp + s, DH, true);
        }
      small_mm(hprev, t == 0 ? NH * DH : T * NH * DH, Rk, G4, ry.data(), G4, rows, DH, G4);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t bt = (r0 + r) * T + t, s = (bt * NH + k) * DH;
        const float* w = wxp + (bt * 4 * NH + k) * DH;
        float *cr = cb.data() + r * DH, *nr = nb.data() + r * DH, *mr = mb.data() + r * DH;
        if (save)
          forward_row<true>(DH, NH * DH, w, ry.data() + r * G4, cr, nr, mr, hsp + s, gp + s * NG, csp + s, nsp + s);
        else
          forward_row<false>(DH, NH * DH, w, ry.data() + r * G4, cr, nr, mr, hsp + s, nullptr, nullptr, nullptr);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = ((r0 + r) * NH + k) * DH;
      const float* hl = T ? hsp + (((r0 + r) * T + T - 1) * NH + k) * DH : h0p + s;
      std::copy(hl, hl + DH, hp + s);
      std::copy(cb.data() + r * DH, cb.data() + (r + 1) * DH, cp + s);
      std::copy(nb.data() + r * DH, nb.data() + (r + 1) * DH, np_ + s);
      std::copy(mb.data() + r * DH, mb.data() + (r + 1) * DH, mp + s);
    }
  });
  return {hs, h, c, n, m, gates, cs, ns};
}

// ------------------------------------------------------------------ backward
// Gradients of slstm_scan_fwd's outputs (grad_hs [B, T, NH, DH], the final grad_h/c/n/m [B, NH, DH]; any of
// them undefined = zero) -> (d wx [B, T, 4, NH, DH], d R [NH, DH, 4 DH], d h0, d c0, d n0, d m0 [B, NH, DH]).
// The other arguments are the forward's inputs and its saved tensors (save=true).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> slstm_scan_bwd(
    const std::optional<at::Tensor>& grad_hs_in, const std::optional<at::Tensor>& grad_h_in,
    const std::optional<at::Tensor>& grad_c_in, const std::optional<at::Tensor>& grad_n_in,
    const std::optional<at::Tensor>& grad_m_in, const at::Tensor& R_in, const at::Tensor& h0_in,
    const at::Tensor& c0_in, const at::Tensor& n0_in, const at::Tensor& hs_in, const at::Tensor& gates_in,
    const at::Tensor& cs_in, const at::Tensor& ns_in) {
  const char* op = "slstm_scan_bwd";
  check_float_cpu(hs_in, op, "hs");
  TORCH_CHECK(hs_in.dim() == 4, op, ": argument 'hs' must have shape [B, T, NH, DH], got ", hs_in.sizes());
  const int64_t B = hs_in.size(0), T = hs_in.size(1), NH = hs_in.size(2), DH = hs_in.size(3), G4 = 4 * DH;
  check_shape(R_in, op, "R", {NH, DH, G4}, "[NH, DH, 4 * DH]");
  for (auto [t, name] : {std::pair{&h0_in, "h0"}, {&c0_in, "c0"}, {&n0_in, "n0"}})
    check_shape(*t, op, name, {B, NH, DH}, "[B, NH, DH]");
  check_shape(gates_in, op, "gates", {B, T, NH, NG, DH}, "[B, T, NH, 6, DH] (the forward must run with save=true)");
  check_shape(cs_in, op, "cs", {B, T, NH, DH}, "[B, T, NH, DH]");
  check_shape(ns_in, op, "ns", {B, T, NH, DH}, "[B, T, NH, DH]");
  auto optional_grad = [&](const std::optional<at::Tensor>& g, const char* name, at::IntArrayRef shape,
                           const char* dims) -> at::Tensor {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    check_shape(*g, op, name, shape, dims);
    return g->contiguous();
  };
  const at::Tensor ghs = optional_grad(grad_hs_in, "grad_hs", {B, T, NH, DH}, "[B, T, NH, DH]");
  const at::Tensor gh = optional_grad(grad_h_in, "grad_h", {B, NH, DH}, "[B, NH, DH]");
  const at::Tensor gc = optional_grad(grad_c_in, "grad_c", {B, NH, DH}, "[B, NH, DH]");
  const at::Tensor gn = optional_grad(grad_n_in, "grad_n", {B, NH, DH}, "[B, NH, DH]");
  const at::Tensor gm = optional_grad(grad_m_in, "grad_m", {B, NH, DH}, "[B, NH, DH]");
  const at::Tensor R = R_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous(), n0 = n0_in.contiguous(),
                   hs = hs_in.contiguous(), gates = gates_in.contiguous(), cs = cs_in.contiguous(),
                   ns = ns_in.contiguous();
  const auto opt = hs.options();
  const at::Tensor Rt = R.transpose(1, 2).contiguous();  // [NH, 4 DH, DH]
  at::Tensor dwx = at::empty({B, T, 4, NH, DH}, opt);
  at::Tensor dh0 = at::empty({B, NH, DH}, opt), dc0 = at::empty({B, NH, DH}, opt), dn0 = at::empty({B, NH, DH}, opt),
             dm0 = at::empty({B, NH, DH}, opt);

  const float* ghsp = ghs.defined() ? ghs.data_ptr<float>() : nullptr;
  const float* ghp = gh.defined() ? gh.data_ptr<float>() : nullptr;
  const float* gcp = gc.defined() ? gc.data_ptr<float>() : nullptr;
  const float* gnp = gn.defined() ? gn.data_ptr<float>() : nullptr;
  const float* gmp = gm.defined() ? gm.data_ptr<float>() : nullptr;
  const float *Rtp = Rt.data_ptr<float>(), *c0p = c0.data_ptr<float>(), *n0p = n0.data_ptr<float>();
  const float *hsp = hs.data_ptr<float>(), *gp = gates.data_ptr<float>(), *csp = cs.data_ptr<float>(),
              *nsp = ns.data_ptr<float>();
  float* dwxp = dwx.data_ptr<float>();
  float *dh0p = dh0.data_ptr<float>(), *dc0p = dc0.data_ptr<float>(), *dn0p = dn0.data_ptr<float>(),
        *dm0p = dm0.data_ptr<float>();
  const Items items(B, NH);

  const int64_t RC = items.rows_per_chunk;
  using Buffers = std::array<std::vector<float>, 5>;  // d pre-activations, carried dh, dc, dn, dm of one item's rows
  auto buffers = [&] {
    return Buffers{std::vector<float>(RC * G4), std::vector<float>(RC * DH), std::vector<float>(RC * DH),
                   std::vector<float>(RC * DH), std::vector<float>(RC * DH)};
  };
  for_each_item<Buffers>(items.count, buffers, [&](int64_t it, Buffers& buf) {
    auto &dp = buf[0], &dh = buf[1], &dc = buf[2], &dn = buf[3], &dm = buf[4];
    const int64_t k = it / items.chunks, r0 = (it % items.chunks) * RC;
    const int64_t rows = std::min(RC, B - r0);
    const float* Rtk = Rtp + k * G4 * DH;
    auto init = [&](const float* src, std::vector<float>& dst) {
      for (int64_t r = 0; r < rows; ++r) {
        float* o = dst.data() + r * DH;
        if (src)
          std::copy(src + ((r0 + r) * NH + k) * DH, src + ((r0 + r) * NH + k + 1) * DH, o);
        else
          std::fill(o, o + DH, 0.f);
      }
    };
    init(ghp, dh), init(gcp, dc), init(gnp, dn), init(gmp, dm);
    for (int64_t t = T - 1; t >= 0; --t) {
      if (t >= AHEAD)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t bt = (r0 + r) * T + t - AHEAD, s = (bt * NH + k) * DH;
          prefetch(gp + s * NG, NG * DH), prefetch(hsp + s, DH), prefetch(csp + s, DH), prefetch(nsp + s, DH);
          if (ghsp) prefetch(ghsp + s, DH);
          for (int64_t g = 0; g < 4; ++g) prefetch(dwxp + ((bt * 4 + g) * NH + k) * DH, DH, true);
        }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = r0 + r, bt = b * T + t, s = (bt * NH + k) * DH;
        const float* cprev = t ? csp + s - NH * DH : c0p + (b * NH + k) * DH;
        const float* nprev = t ? nsp + s - NH * DH : n0p + (b * NH + k) * DH;
        const int64_t o = r * DH;
        backward_row(DH, NH * DH, ghsp ? ghsp + s : nullptr, gp + s * NG, hsp + s, csp + s, nsp + s, cprev, nprev,
                     dh.data() + o, dc.data() + o, dn.data() + o, dm.data() + o, dwxp + (bt * 4 * NH + k) * DH,
                     dp.data() + r * G4);
      }
      small_mm(dp.data(), G4, Rtk, DH, dh.data(), DH, rows, G4, DH);  // d h_{t-1} = dpre_t R^T
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = ((r0 + r) * NH + k) * DH;
      std::copy(dh.data() + r * DH, dh.data() + (r + 1) * DH, dh0p + s);
      std::copy(dc.data() + r * DH, dc.data() + (r + 1) * DH, dc0p + s);
      std::copy(dn.data() + r * DH, dn.data() + (r + 1) * DH, dn0p + s);
      std::copy(dm.data() + r * DH, dm.data() + (r + 1) * DH, dm0p + s);
    }
  });
  // dR[k] = sum over rows and steps of h_{t-1}^T dpre_t: one batched product over the heads
  at::Tensor dR;
  if (B * T == 0) {
    dR = at::zeros({NH, DH, G4}, opt);
  } else {
    const at::Tensor hprev = at::cat({h0.unsqueeze(1), hs.narrow(1, 0, T - 1)}, 1);  // [B, T, NH, DH]
    dR = at::bmm(hprev.permute({2, 3, 0, 1}).reshape({NH, DH, B * T}),
                 dwx.permute({3, 0, 1, 2, 4}).reshape({NH, B * T, G4}));
  }
  return {dwx, dR, dh0, dc0, dn0, dm0};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lram, m) {
  m.def(
      "slstm_scan_fwd(Tensor wx, Tensor R, Tensor h0, Tensor c0, Tensor n0, Tensor m0, bool save) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "slstm_scan_bwd(Tensor? grad_hs, Tensor? grad_h, Tensor? grad_c, Tensor? grad_n, Tensor? grad_m, Tensor R, "
      "Tensor h0, Tensor c0, Tensor n0, Tensor hs, Tensor gates, Tensor cs, Tensor ns) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lram, CPU, m) {
  m.impl("slstm_scan_fwd", &slstm_scan_fwd);
  m.impl("slstm_scan_bwd", &slstm_scan_bwd);
}
