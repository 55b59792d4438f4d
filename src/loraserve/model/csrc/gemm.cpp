// The base model's matrix product at every row count: out (M, N) = x (M, K) @ w^T (+ bias), on
// weights packed once (packed.py's pack_for_gemm) as (G, Kw, 16 * P): G = ceil(N / 16) groups of
// 16 output channels, P = 4 / sizeof(T) consecutive k per 32-bit word (bf16 pairs, single fp32),
// Kw = ceil(K / P) words, zero padded. One 64-byte load is 16 channels x one word of k, and one
// broadcast word of x is that row's same k — VDPBF16PS's operand shapes, or an FMA's in fp32.
// A tile keeps R rows x C groups of fp32 sums in registers: nothing is reduced across lanes, each
// weight is loaded once per R rows and each x word once per C groups (SmolLM2's matrices at 32
// rows, weights cold, AVX512-BF16 Zen 4: 82% of the bf16 peak; oneDNN's packed linear 65%).
// Every output is one fp32 sum in k order, plus the bias, rounded once to T: the same bits for
// every M and every tile it lands in (batch-invariant). In bf16 these are oneDNN's bits at one
// row and all but ~1e-4 of them (1 ulp apart) at more, measured on that CPU.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"

using simd::Elem;
using simd::Vec;

namespace kernels {
namespace {

constexpr int kLanes = 16;  // output channels per packed group

template <class T>
constexpr int kPerWord = 4 / int(sizeof(T));  // k per 32-bit word: 2 bf16, 1 fp32

// Whether this build has the register-tile kernel for T (else the plain loop below serves, and
// packed.py keeps oneDNN): VDPBF16PS for bf16, 16-lane FMA for fp32. Not AVX2: with 16 ymm
// registers a tile holds 6 x 8 channels, and on an AVX-512 Zen 4 built for AVX2 it ran at 0.89x /
// 0.93x oneDNN's fp32 GEMM at 8 / 32 rows (benchmarks/bench_gemm.py --level avx2).
template <class T>
constexpr bool kTiled =
#if defined(__AVX512BF16__)
    true;
#elif defined(__AVX512F__)
    std::is_same_v<T, float>;
#else
    false;
#endif

// Tile sizes: R x C accumulators, C weight vectors and one broadcast within AVX-512's 32 registers.
constexpr int kMaxRows = 6;
constexpr int kMaxGroups = 4;

// x's row word k: P elements as 32 bits (packed_gemm pads rows of odd K to whole words).
template <class T>
inline int32_t x_word(const T* row, int64_t k) {
  int32_t word;
  std::memcpy(&word, row + kPerWord<T> * k, 4);
  return word;
}

// Pulls word k (a 64-byte line) of each of the next block's `groups` groups towards L2, for the
// first `count` words of this tile's share.
template <class T>
inline void prefetch_next(const T* next, int64_t groups, int64_t count, int64_t gs, int64_t k) {
  if (k < count)
    for (int64_t c = 0; c < groups; ++c)
      __builtin_prefetch(next + c * gs + k * kPerWord<T> * kLanes, 0, 2);  // read, to L2
}

// What a tile prefetches of the next block of weights: `count` words from `next` in each of `groups`.
template <class T>
struct Prefetch {
  const T* next;
  int64_t groups, count;
};

// One tile's sums, acc[r][16 * c + j] = sum_k x[r][k] * w[n0 + 16c + j][k], in fp32, k in order;
// meanwhile its share of the next block of weights is prefetched, a line per group per k.
template <int R, int C, class T>
void tile_sums(const T* x, int64_t xs, const T* w, int64_t gs, int64_t Kw, int64_t K, Prefetch<T> pf,
               float (*acc)[C * kLanes]) {
  if constexpr (kTiled<T>) {
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, bf16_t>) {
      __m512 sums[R][C];  // fully unrolled, so the sums live in registers
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) sums[r][c] = _mm512_setzero_ps();
      for (int64_t k = 0; k < Kw; ++k) {
        __m512bh wv[C];
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) wv[c] = (__m512bh)_mm512_loadu_si512(w + c * gs + k * 2 * kLanes);
        prefetch_next(pf.next, pf.groups, pf.count, gs, k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512bh xb = (__m512bh)_mm512_set1_epi32(x_word(x + r * xs, k));
#pragma GCC unroll 4
          for (int c = 0; c < C; ++c) sums[r][c] = _mm512_dpbf16_ps(sums[r][c], xb, wv[c]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc[r] + c * kLanes, sums[r][c]);
      return;
    }
#endif
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      __m512 sums[R][C];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) sums[r][c] = _mm512_setzero_ps();
      for (int64_t k = 0; k < Kw; ++k) {
        __m512 wv[C];
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_ps(w + c * gs + k * kLanes);
        prefetch_next(pf.next, pf.groups, pf.count, gs, k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512 xb = _mm512_set1_ps(x[r * xs + k]);
#pragma GCC unroll 4
          for (int c = 0; c < C; ++c) sums[r][c] = _mm512_fmadd_ps(xb, wv[c], sums[r][c]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc[r] + c * kLanes, sums[r][c]);
      return;
    }
#endif
  }
  // the plain loop: same layout, fp32 sums in k order, each step one explicit fused multiply-add
  // (the compiler contracts a * b + c as it likes per instantiation, and each row must give the
  // same bits in every tile)
  constexpr int P = kPerWord<T>;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C * kLanes; ++j) acc[r][j] = 0.f;
  for (int64_t k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c) {
      const T* wk = w + c * gs + (k / P) * P * kLanes + k % P;
      for (int r = 0; r < R; ++r) {
        const float xk = Elem<T>::to_f(x[r * xs + k]);
        for (int j = 0; j < kLanes; ++j) acc[r][c * kLanes + j] = std::fma(xk, Elem<T>::to_f(wk[j * P]), acc[r][c * kLanes + j]);
      }
    }
}

// Rows [0, R) of x (row stride xs) times C packed groups (group stride gs), plus the bias, into
// out (row stride os) for channels [n0, n0 + 16C) that are < N.
template <int R, int C, class T>
void tile(const T* x, int64_t xs, const T* w, int64_t gs, int64_t Kw, int64_t K, Prefetch<T> pf, const T* bias,
          T* out, int64_t os, int64_t n0, int64_t N) {
  using E = Elem<T>;
  alignas(64) float acc[R][C * kLanes];
  tile_sums<R, C, T>(x, xs, w, gs, Kw, K, pf, acc);
  const int64_t count = std::min<int64_t>(C * kLanes, N - n0);
  for (int r = 0; r < R; ++r) {
    T* row = out + r * os + n0;
    int64_t n = 0;
    for (; n + Vec::W <= count; n += Vec::W) {
      Vec::reg v = Vec::load(acc[r] + n);
      if (bias != nullptr) v = Vec::add(v, E::load(bias + n0 + n));
      E::store(row + n, v);
    }
    for (; n < count; ++n) row[n] = E::from_f(bias != nullptr ? acc[r][n] + E::to_f(bias[n0 + n]) : acc[r][n]);
  }
}

template <class T>
using TileFn = void (*)(const T*, int64_t, const T*, int64_t, int64_t, int64_t, Prefetch<T>, const T*, T*, int64_t,
                        int64_t, int64_t);

template <class T, int R, int... C>
constexpr std::array<TileFn<T>, sizeof...(C)> tiles_of_rows(std::integer_sequence<int, C...>) {
  return {&tile<R, C + 1, T>...};
}

template <class T, int... R>
constexpr std::array<std::array<TileFn<T>, kMaxGroups>, sizeof...(R)> tile_table(std::integer_sequence<int, R...>) {
  return {tiles_of_rows<T, R + 1>(std::make_integer_sequence<int, kMaxGroups>{})...};
}

}  // namespace

template <class T>
bool packed_gemm_tiled() {
  return kTiled<T>;
}

template <class T>
void packed_gemm(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1), G = w.size(0), Kw = w.size(1);
  if (M == 0 || N == 0) return;  // an empty step (no tokens) or an empty matrix
  const int64_t gs = Kw * kPerWord<T> * kLanes, os = out.stride(0);
  static constexpr auto table = tile_table<T>(std::make_integer_sequence<int, kMaxRows>{});
  int64_t xs = x.stride(0);
  const T* xp = x.data_ptr<T>();
  std::vector<T> padded;  // rows of odd K as whole words, a zero after each (no model has odd K)
  if (Kw * kPerWord<T> != K) {
    xs = Kw * kPerWord<T>;
    padded.assign(M * xs, T(0.f));
    for (int64_t m = 0; m < M; ++m) std::copy(xp + m * x.stride(0), xp + m * x.stride(0) + K, padded.data() + m * xs);
    xp = padded.data();
  }
  const T* wp = w.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const int64_t tiles = (M + kMaxRows - 1) / kMaxRows, share = (Kw + tiles - 1) / tiles;
  // each thread takes a contiguous run of groups and streams them once, every row against each
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = G * t / threads, last = G * (t + 1) / threads;
    for (int64_t g = first; g < last; g += kMaxGroups) {
      const int64_t groups = std::min<int64_t>(kMaxGroups, last - g);
      const int64_t next_groups = std::min<int64_t>(kMaxGroups, std::max<int64_t>(last - g - groups, 0));
      // the row tiles of this block share the prefetch of the next one, so its lines come from
      // memory while this block is re-read from L2 (SmolLM2's matrices at 32 rows, weights cold:
      // ~3% faster; they run at ~82% of the bf16 peak cold, 93-97% in cache)
      for (int64_t m = 0, i = 0; m < M; m += kMaxRows, ++i) {
        const int64_t rows = std::min<int64_t>(kMaxRows, M - m);
        const Prefetch<T> pf{next_groups > 0 ? wp + (g + groups) * gs + i * share * kPerWord<T> * kLanes : nullptr,
                             next_groups, std::min(share, Kw - i * share)};
        table[rows - 1][groups - 1](xp + m * xs, xs, wp + g * gs, gs, Kw, K, pf, bp, op + m * os, os, g * kLanes, N);
      }
    }
  }
}

LORASERVE_INSTANTIATE(packed_gemm, (at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor))
template bool packed_gemm_tiled<float>();
template bool packed_gemm_tiled<bf16_t>();

}  // namespace kernels
