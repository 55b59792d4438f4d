// W8A8: int8 weights (one fp32 scale per output row) times int8 activations (one fp32 scale per
// row of x, quantized on the fly): out (M, N) = (qx @ q^T) * sx[m] * sw[n] (+ bias). The integer
// product is exact in int32 (the GEMV's shifted sums, 255 * 127 * K, below 2^31 for K <= 66,000:
// checked), so every path — the GEMV below for a few rows, oneDNN's int8 GEMM between
// w8a8_quantize and w8a8_rescale for more (called from w8a8.py), the PyTorch fallback there —
// computes the same numbers: only the conversion of the sum to fp32 and the final two fp32
// multiplies round, in one order.
// What it buys over weight-only int8: no widening of the weights to fp32 — VPDPBUSD multiplies
// 64 int8 pairs per instruction where the CPU has AVX512-VNNI, and oneDNN's int8 GEMM has twice
// the multiply rate of its bf16 one.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

using simd::Elem;

namespace kernels {
namespace {

// sum_k qx[k] * q[k], exact. With AVX512-VNNI, VPDPBUSD takes an unsigned and a signed operand:
// x is passed shifted by +128 (xu = qx + 128, in [1, 255]) and the caller subtracts 128 * sum_k q[k].
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr bool kShifted = true;
inline int32_t dot_int8(const uint8_t* xu, const int8_t* row, int64_t K) {
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 128 <= K; k += 128) {
    a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(xu + k), _mm512_loadu_si512(row + k));
    a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(xu + k + 64), _mm512_loadu_si512(row + k + 64));
  }
  for (; k < K; k += 64) {
    const __mmask64 mask = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(mask, xu + k), _mm512_maskz_loadu_epi8(mask, row + k));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}
#else
constexpr bool kShifted = false;
inline int32_t dot_int8(const int8_t* x, const int8_t* row, int64_t K) {
  int32_t total = 0;  // the compiler vectorizes this (PMADDWD on AVX2 / AVX-512BW)
  for (int64_t k = 0; k < K; ++k) total += int32_t(x[k]) * int32_t(row[k]);
  return total;
}
#endif

// x (M, K) rows to int8, symmetric per row: sx = max|x| / 127 (a zero row gets the smallest
// normal float, so it quantizes to zeros), q = round-half-even(x / sx), stored as q + 128 (uint8:
// oneDNN's int8 GEMM takes unsigned activations with a zero point, VPDPBUSD an unsigned operand).
template <class T>
void quantize_row(const T* row, int64_t K, uint8_t* xu, float* sx) {
  using E = Elem<T>;
  float amax = 0.f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    const float v = std::fabs(E::to_f(row[k]));
    finite = finite && std::isfinite(v);
    amax = std::max(amax, v);
  }
  if (!finite) {  // NaN/inf: the row's products are non-finite, as PyTorch's are
    *sx = std::numeric_limits<float>::quiet_NaN();
    std::memset(xu, 128, K);
    return;
  }
  const float scale = std::max(amax / 127.f, FLT_MIN);
  *sx = scale;
  for (int64_t k = 0; k < K; ++k)
    xu[k] = uint8_t(int32_t(std::clamp(std::nearbyint(E::to_f(row[k]) / scale), -127.f, 127.f)) + 128);
}

// float(acc) * sx * sw (+ bias), rounded once to T: the one rounding every path shares.
template <class T>
inline T rescale(float acc, float sx, float sw, const T* bias, int64_t n) {
  using E = Elem<T>;
  const float value = acc * sx * sw;
  return E::from_f(bias != nullptr ? value + E::to_f(bias[n]) : value);
}

}  // namespace

template <class T>
void w8a8_quantize(at::Tensor x, at::Tensor xu, at::Tensor sx) {
  const int64_t M = x.size(0), K = x.size(1), stride = x.stride(0);
  const T* xp = x.data_ptr<T>();
  uint8_t* up = xu.data_ptr<uint8_t>();
  float* sp = sx.data_ptr<float>();
#pragma omp parallel for schedule(static) if (M > 1)
  for (int64_t m = 0; m < M; ++m) quantize_row<T>(xp + m * stride, K, up + m * K, sp + m);
}

template <class T>
void w8a8_rescale(at::Tensor acc, at::Tensor sx, at::Tensor sw, c10::optional<at::Tensor> bias, at::Tensor out) {
  const int64_t M = acc.size(0), N = acc.size(1), a_stride = acc.stride(0), o_stride = out.stride(0);
  const float* ap = acc.data_ptr<float>();
  const float* sxp = sx.data_ptr<float>();
  const float* swp = sw.data_ptr<float>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) op[m * o_stride + n] = rescale<T>(ap[m * a_stride + n], sxp[m], swp[n], bp, n);
}

template <class T>
void w8a8_gemv(at::Tensor x, at::Tensor q, at::Tensor wsum, at::Tensor sw, c10::optional<at::Tensor> bias,
               at::Tensor out) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0), o_stride = out.stride(0);
  std::vector<uint8_t> xu(M * K);
  std::vector<float> sx(M);
  for (int64_t m = 0; m < M; ++m) quantize_row<T>(x.data_ptr<T>() + m * x.stride(0), K, xu.data() + m * K, &sx[m]);
  const int8_t* qp = q.data_ptr<int8_t>();
  const int32_t* wsp = wsum.data_ptr<int32_t>();
  const float* swp = sw.data_ptr<float>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
#if !(defined(__AVX512VNNI__) && defined(__AVX512BW__))
  std::vector<int8_t> xs(M * K);  // the plain loop multiplies signed values
  for (int64_t i = 0; i < M * K; ++i) xs[i] = int8_t(int32_t(xu[i]) - 128);
  const int8_t* xin = xs.data();
#else
  const uint8_t* xin = xu.data();
#endif
  // each thread streams its weight rows once, every row of x against each
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int32_t offset = kShifted ? 128 * wsp[n] : 0;
    for (int64_t m = 0; m < M; ++m) {
      const int32_t acc = dot_int8(xin + m * K, qp + n * K, K) - offset;
      op[m * o_stride + n] = rescale<T>(float(acc), sx[m], swp[n], bp, n);
    }
  }
}

LORASERVE_INSTANTIATE(w8a8_quantize, (at::Tensor, at::Tensor, at::Tensor))
LORASERVE_INSTANTIATE(w8a8_rescale, (at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))
LORASERVE_INSTANTIATE(w8a8_gemv, (at::Tensor, at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))

}  // namespace kernels
