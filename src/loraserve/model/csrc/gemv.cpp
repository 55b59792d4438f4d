// The base model's matrix product for a few rows (a single stream's decode): out (M, N) =
// x (M, K) @ w (N, K)^T (+ bias). At one row a decode step is bound by reading the weights, and
// oneDNN's GEMM reads them at about half the machine's bandwidth there (benchmarks/profile_step.py);
// this kernel streams each weight row once for all M rows of x, the threads over disjoint ranges
// of N, each reading its rows as one sequential stream (which the prefetcher follows).
// fp32 accumulation, one rounding to T at the end, as oneDNN's bf16 GEMM does; bf16 pairs go
// through VDPBF16PS where the CPU has it (products exact in fp32, like the widening path).
#include <algorithm>
#include <vector>

#include "kernels.h"

using simd::bf16_t;
using simd::Elem;
using simd::Vec;

namespace kernels {
namespace {

constexpr int64_t kRows = 8;  // weight rows per pass

// sum_k w[r][k] * x[k] for the `rows` weight rows starting at w (stride K), into dots[0..rows):
// one row after the other (one sequential stream per thread, which the hardware prefetcher
// follows), four accumulators along the row so the FMA chain is not latency-bound.
template <class T>
void dot_rows(const T* x, const T* w, int64_t K, int64_t rows, float* dots) {
  using E = Elem<T>;
  constexpr int64_t W = Vec::W;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = w + r * K;
    Vec::reg a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
    int64_t k = 0;
    for (; k + 4 * W <= K; k += 4 * W) {
      a0 = Vec::fmadd(E::load(row + k), E::load(x + k), a0);
      a1 = Vec::fmadd(E::load(row + k + W), E::load(x + k + W), a1);
      a2 = Vec::fmadd(E::load(row + k + 2 * W), E::load(x + k + 2 * W), a2);
      a3 = Vec::fmadd(E::load(row + k + 3 * W), E::load(x + k + 3 * W), a3);
    }
    for (; k + W <= K; k += W) a0 = Vec::fmadd(E::load(row + k), E::load(x + k), a0);
    float total = Vec::sum(Vec::add(Vec::add(a0, a1), Vec::add(a2, a3)));
    for (; k < K; ++k) total += E::to_f(row[k]) * E::to_f(x[k]);
    dots[r] = total;
  }
}

#if defined(__AVX512BF16__)
// One weight row after the other (one sequential stream per thread, which the prefetcher follows
// across pages), four accumulators along the row so the VDPBF16PS chain is not latency-bound.
template <>
void dot_rows<bf16_t>(const bf16_t* x, const bf16_t* w, int64_t K, int64_t rows, float* dots) {
  for (int64_t r = 0; r < rows; ++r) {
    const bf16_t* row = w + r * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(row + k), (__m512bh)_mm512_loadu_si512(x + k));
      a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(row + k + 32), (__m512bh)_mm512_loadu_si512(x + k + 32));
      a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(row + k + 64), (__m512bh)_mm512_loadu_si512(x + k + 64));
      a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(row + k + 96), (__m512bh)_mm512_loadu_si512(x + k + 96));
    }
    for (; k < K; k += 32) {
      const __mmask32 mask = K - k >= 32 ? __mmask32(~0u) : __mmask32((1u << (K - k)) - 1);
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(mask, row + k),
                            (__m512bh)_mm512_maskz_loadu_epi16(mask, x + k));
    }
    dots[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}
#endif

}  // namespace

template <class T>
void gemv(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out) {
  using E = Elem<T>;
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const int64_t x_stride = x.stride(0), o_stride = out.stride(0);
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const int64_t passes = (N + kRows - 1) / kRows;
#pragma omp parallel for schedule(static)
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t n = pass * kRows, rows = std::min(kRows, N - n);
    float dots[kRows];
    for (int64_t m = 0; m < M; ++m) {
      dot_rows<T>(xp + m * x_stride, wp + n * K, K, rows, dots);
      for (int64_t r = 0; r < rows; ++r)
        op[m * o_stride + n + r] = E::from_f(bp != nullptr ? dots[r] + E::to_f(bp[n + r]) : dots[r]);
    }
  }
}

LORASERVE_INSTANTIATE(gemv, (at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))

namespace {

// int8 widened to fp32 lanes: Vec::W weights from p.
inline Vec::reg load_int8(const int8_t* p) {
#if defined(__AVX512F__)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__) && defined(__FMA__)
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  return float(*p);
#endif
}

// sum_k q[k] * x[k] for one int8 row against fp32 x, four accumulators along the row.
inline float dot_int8(const float* x, const int8_t* row, int64_t K) {
  constexpr int64_t W = Vec::W;
  Vec::reg a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
  int64_t k = 0;
  for (; k + 4 * W <= K; k += 4 * W) {
    a0 = Vec::fmadd(load_int8(row + k), Vec::load(x + k), a0);
    a1 = Vec::fmadd(load_int8(row + k + W), Vec::load(x + k + W), a1);
    a2 = Vec::fmadd(load_int8(row + k + 2 * W), Vec::load(x + k + 2 * W), a2);
    a3 = Vec::fmadd(load_int8(row + k + 3 * W), Vec::load(x + k + 3 * W), a3);
  }
  for (; k + W <= K; k += W) a0 = Vec::fmadd(load_int8(row + k), Vec::load(x + k), a0);
  float total = Vec::sum(Vec::add(Vec::add(a0, a1), Vec::add(a2, a3)));
  for (; k < K; ++k) total += float(row[k]) * x[k];
  return total;
}

// out (M, N) = row_dot(x row m widened to fp32, int8 row n, n) (+ bias), for the int8 formats:
// x widened once (every row of q reads it), each thread streaming its rows of q as gemv does.
template <class T, class RowDot>
void int8_rows(at::Tensor x, at::Tensor q, c10::optional<at::Tensor> bias, at::Tensor out, RowDot row_dot) {
  using E = Elem<T>;
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const int64_t x_stride = x.stride(0), o_stride = out.stride(0);
  std::vector<float> xf(M * K);
  const T* xp = x.data_ptr<T>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xf[m * K + k] = E::to_f(xp[m * x_stride + k]);
  const int8_t* qp = q.data_ptr<int8_t>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const float dot = row_dot(xf.data() + m * K, qp + n * K, n);
      op[m * o_stride + n] = E::from_f(bp != nullptr ? dot + E::to_f(bp[n]) : dot);
    }
  }
}

constexpr int64_t kBlock = 32;  // GGUF Q8_0's block

// sum over blocks of d[b] * sum_{k in b} q[k] * x[k] for one row, K a multiple of kBlock.
inline float dot_q8_0(const float* x, const int8_t* row, const float* d, int64_t K) {
  Vec::reg total = Vec::zero();
  for (int64_t k = 0, b = 0; k < K; k += kBlock, ++b) {
    Vec::reg block = Vec::zero();
    for (int64_t j = 0; j < kBlock; j += Vec::W) block = Vec::fmadd(load_int8(row + k + j), Vec::load(x + k + j), block);
    total = Vec::fmadd(block, Vec::set1(d[b]), total);
  }
  return Vec::sum(total);
}

}  // namespace

// Weight-only int8: out (M, N) = (x @ q^T) * scales (+ bias), q (N, K) int8 with one fp32 scale
// per row; half the bytes of bf16 streamed the same way as gemv.
template <class T>
void gemv_int8(at::Tensor x, at::Tensor q, at::Tensor scales, c10::optional<at::Tensor> bias, at::Tensor out) {
  const float* sp = scales.data_ptr<float>();
  const int64_t K = x.size(1);
  int8_rows<T>(x, q, bias, out,
               [=](const float* xr, const int8_t* qr, int64_t n) { return dot_int8(xr, qr, K) * sp[n]; });
}

LORASERVE_INSTANTIATE(gemv_int8, (at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))

// GGUF Q8_0 weights: out (M, N) = x @ (q * d)^T (+ bias), q (N, K) int8, d (N, K/32) fp32 (one
// scale per block of 32 along K).
template <class T>
void gemv_q8_0(at::Tensor x, at::Tensor q, at::Tensor d, c10::optional<at::Tensor> bias, at::Tensor out) {
  const float* dp = d.data_ptr<float>();
  const int64_t K = x.size(1), blocks = K / kBlock;
  int8_rows<T>(x, q, bias, out, [=](const float* xr, const int8_t* qr, int64_t n) {
    return dot_q8_0(xr, qr, dp + n * blocks, K);
  });
}

LORASERVE_INSTANTIATE(gemv_q8_0, (at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))

}  // namespace kernels
