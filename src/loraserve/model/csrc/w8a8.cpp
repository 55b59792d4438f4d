// W8A8: int8 weights (one fp32 scale per output row) times int8 activations (one fp32 scale per
// row of x, quantized on the fly): out (M, N) = (qx @ q^T) * sx[m] * sw[n]. The integer product
// is exact in int32 (the shifted sums, 255 * 127 * K, below 2^31 for K <= 66,000: checked), so
// every path — the GEMM below, oneDNN's int8 GEMM between w8a8_quantize and w8a8_rescale (called
// from w8a8.py for long prefills), the PyTorch fallback there — computes the same numbers: only
// the conversion of the sum to fp32 and the final two fp32 multiplies round, in one order.
// What it buys over weight-only int8: no widening of the weights — VPDPBUSD multiplies 64 int8
// pairs per instruction where the CPU has AVX512-VNNI, twice bf16's rate.
//
// The GEMM reads weights packed for VPDPBUSD (w8a8.py's pack_vnni): (G, K4, 16, 4), G = ceil(N /
// 16) groups of 16 output channels, K4 = ceil(K / 4), zero padded; one 64-byte load is 16
// channels x 4 consecutive k, and one broadcast 32-bit word of x is that row's same 4 k. A tile
// keeps R rows x C groups of int32 sums in registers, so nothing is reduced across lanes, each
// weight byte is loaded once per R rows and each x word once per C groups.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "kernels.h"

using simd::Elem;
using simd::Vec;

namespace kernels {
namespace {

constexpr int kLanes = 16;  // output channels per packed group
constexpr int kMaxRows = 6;
constexpr int kMaxGroups = 4;

// x (M, K) rows to int8, symmetric per row: sx = max|x| / 127 (a zero row gets the smallest
// normal float, so it quantizes to zeros), q = round-half-even(x / sx), stored as q + 128 (uint8:
// oneDNN's int8 GEMM takes unsigned activations with a zero point, VPDPBUSD an unsigned operand).
// A row holding NaN/inf gets a NaN scale (its products non-finite, as PyTorch's are) and zeros.
// Row `xu` holds `padded` >= K bytes; those past K are zeros (128) too.
template <class T>
void quantize_row(const T* row, int64_t K, int64_t padded, uint8_t* xu, float* sx) {
  using E = Elem<T>;
  int64_t k = 0;
  float amax = 0.f, poison = 0.f;  // poison: sum of x * 0, NaN iff some x is NaN or inf
#if defined(__AVX512F__)
  Vec::reg vmax = Vec::zero(), vpoison = Vec::zero();
  for (; k + Vec::W <= K; k += Vec::W) {
    const Vec::reg v = E::load(row + k);
    vmax = Vec::max(vmax, _mm512_abs_ps(v));
    vpoison = Vec::add(vpoison, Vec::mul(v, Vec::zero()));
  }
  amax = _mm512_reduce_max_ps(vmax);
  poison = Vec::sum(vpoison);
#endif
  for (; k < K; ++k) {
    const float v = E::to_f(row[k]);
    amax = std::max(amax, std::fabs(v));
    poison += v * 0.f;
  }
  if (!std::isfinite(poison) || !std::isfinite(amax)) {
    *sx = std::numeric_limits<float>::quiet_NaN();
    std::memset(xu, 128, padded);
    return;
  }
  const float scale = std::max(amax / 127.f, FLT_MIN);
  *sx = scale;
  k = 0;
#if defined(__AVX512F__)
  const Vec::reg vscale = Vec::set1(scale), lo = Vec::set1(-127.f), hi = Vec::set1(127.f);
  for (; k + Vec::W <= K; k += Vec::W) {
    const Vec::reg q = Vec::min(Vec::max(Vec::rint(Vec::div(E::load(row + k), vscale)), lo), hi);
    const __m512i shifted = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xu + k), _mm512_cvtepi32_epi8(shifted));
  }
#endif
  for (; k < K; ++k)
    xu[k] = uint8_t(int32_t(std::clamp(std::nearbyint(E::to_f(row[k]) / scale), -127.f, 127.f)) + 128);
  std::memset(xu + K, 128, padded - K);
}

// out[n] = float(acc[n]) * sx * sw[n] for `count` channels, rounded once to T: the one rounding
// every path shares (vector and scalar tails give the same bits: two IEEE multiplies, one store).
template <class T>
inline void rescale_row(const float* acc, float sx, const float* sw, T* out, int64_t count) {
  using E = Elem<T>;
  int64_t n = 0;
  const Vec::reg vsx = Vec::set1(sx);
  for (; n + Vec::W <= count; n += Vec::W) E::store(out + n, Vec::mul(Vec::mul(Vec::load(acc + n), vsx), Vec::load(sw + n)));
  for (; n < count; ++n) out[n] = E::from_f(acc[n] * sx * sw[n]);
}

// One tile: rows [0, R) of xu (row stride xs bytes) times C packed groups (group stride gs bytes),
// the exact sums minus 128 * wsum, rescaled into out (row stride os) for channels [n0, n0 + 16C)
// that are < N.
template <int R, int C, class T>
void tile(const uint8_t* xu, int64_t xs, const int8_t* w, int64_t gs, int64_t K4, const int32_t* wsum,
          const float* sx, const float* sw, T* out, int64_t os, int64_t n0, int64_t N) {
  alignas(64) int32_t sums[R][C * kLanes];
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512i acc[R][C];  // fully unrolled, so the sums live in registers
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K4; ++k) {
    __m512i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_si512(w + c * gs + k * 64);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      int32_t word;
      std::memcpy(&word, xu + r * xs + 4 * k, 4);
      const __m512i xb = _mm512_set1_epi32(word);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xb, wv[c]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) _mm512_store_si512(sums[r] + c * kLanes, acc[r][c]);
#else
  std::memset(sums, 0, sizeof(sums));  // the plain loop, same layout, same exact sums
  for (int64_t k = 0; k < K4; ++k)
    for (int c = 0; c < C; ++c) {
      const int8_t* wk = w + c * gs + k * 64;
      for (int r = 0; r < R; ++r) {
        const uint8_t* xk = xu + r * xs + 4 * k;
        for (int j = 0; j < kLanes; ++j)
          sums[r][c * kLanes + j] += int32_t(xk[0]) * wk[4 * j] + int32_t(xk[1]) * wk[4 * j + 1] +
                                     int32_t(xk[2]) * wk[4 * j + 2] + int32_t(xk[3]) * wk[4 * j + 3];
      }
    }
#endif
  const int64_t count = std::min<int64_t>(C * kLanes, N - n0);
  alignas(64) float exact[C * kLanes];
  for (int r = 0; r < R; ++r) {
    for (int64_t j = 0; j < count; ++j) exact[j] = float(sums[r][j] - 128 * wsum[n0 + j]);
    rescale_row<T>(exact, sx[r], sw + n0, out + r * os + n0, count);
  }
}

}  // namespace

template <class T>
void w8a8_quantize(at::Tensor x, at::Tensor xu, at::Tensor sx) {
  const int64_t M = x.size(0), K = x.size(1), stride = x.stride(0);
  const T* xp = x.data_ptr<T>();
  uint8_t* up = xu.data_ptr<uint8_t>();
  float* sp = sx.data_ptr<float>();
#pragma omp parallel for schedule(static) if (M > 1)
  for (int64_t m = 0; m < M; ++m) quantize_row<T>(xp + m * stride, K, K, up + m * K, sp + m);
}

template <class T>
void w8a8_rescale(at::Tensor acc, at::Tensor sx, at::Tensor sw, at::Tensor out) {
  const int64_t M = acc.size(0), N = acc.size(1), a_stride = acc.stride(0), o_stride = out.stride(0);
  const float* ap = acc.data_ptr<float>();
  const float* sxp = sx.data_ptr<float>();
  const float* swp = sw.data_ptr<float>();
  T* op = out.data_ptr<T>();
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) rescale_row<T>(ap + m * a_stride, sxp[m], swp, op + m * o_stride, N);
}

template <class T>
void w8a8_gemm(at::Tensor x, at::Tensor w, at::Tensor wsum, at::Tensor sw, at::Tensor out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1), G = w.size(0), K4 = w.size(1);
  const int64_t xs = K4 * 4, gs = K4 * 64, o_stride = out.stride(0);
  std::vector<uint8_t> xu(M * xs);
  std::vector<float> sx(M);
  const T* xp = x.data_ptr<T>();
#pragma omp parallel for schedule(static) if (M > 4)
  for (int64_t m = 0; m < M; ++m) quantize_row<T>(xp + m * x.stride(0), K, xs, xu.data() + m * xs, &sx[m]);
  static constexpr auto table =
      tile_table<kMaxRows, kMaxGroups>([](auto r, auto c) { return &tile<decltype(r)::value, decltype(c)::value, T>; });
  const int8_t* wp = w.data_ptr<int8_t>();
  const int32_t* wsp = wsum.data_ptr<int32_t>();
  const float* swp = sw.data_ptr<float>();
  T* op = out.data_ptr<T>();
  // each thread takes a contiguous run of groups and streams them once, every row against each
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = G * t / threads, last = G * (t + 1) / threads;
    for (int64_t g = first; g < last; g += kMaxGroups) {
      const int64_t groups = std::min<int64_t>(kMaxGroups, last - g);
      for (int64_t m = 0; m < M; m += kMaxRows) {
        const int64_t rows = std::min<int64_t>(kMaxRows, M - m);
        table[rows - 1][groups - 1](xu.data() + m * xs, xs, wp + g * gs, gs, K4, wsp, sx.data() + m, swp,
                                    op + m * o_stride, o_stride, g * kLanes, N);
      }
    }
  }
}

LORASERVE_INSTANTIATE(w8a8_quantize, (at::Tensor, at::Tensor, at::Tensor))
LORASERVE_INSTANTIATE(w8a8_rescale, (at::Tensor, at::Tensor, at::Tensor, at::Tensor))
LORASERVE_INSTANTIATE(w8a8_gemm, (at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor))

}  // namespace kernels
