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

// What a tile prefetches towards L2 while it computes: words [k, k + count) of `groups` groups
// from `base` (the next chunk of k of its block, or the next block's first), one line per group
// per step of its own loop.
template <class T>
struct Prefetch {
  const T* base = nullptr;
  int64_t groups = 0, k = 0, count = 0;

  void operator()(int64_t gs, int64_t step) const {
    if (step < count)
      for (int64_t c = 0; c < groups; ++c) __builtin_prefetch(base + c * gs + (k + step) * kPerWord<T> * kLanes, 0, 2);
  }
};

// Lines of the memory the caller reads next (decode_loop.cpp: the adapters its BGMV reads after
// this GEMM), which each thread prefetches during its tiles' last k steps: they come from memory
// while the GEMM computes instead of after it. A thread takes an even share of the lines, in
// order, as BGMV's static schedule gives its first tiles (its first slots) to the first thread.
// At batch 32 over 32 distinct adapters (SmolLM2, r16 on every linear, bf16, AVX512-BF16 Zen 4)
// the step's BGMVs took ~10.3 ms cold and ~4.9 ms warmed, its GEMMs ~2.6 ms longer: the step
// 1.05-1.09x faster; Llama-3.2-1B's (9 MB a GEMM, more than the cache keeps) 1.00x. Measured and
// not kept: T1 hints (half the gain), T2 (none), warming a layer ahead (the lines were gone).
class Warmer {
 public:
  // At most this many lines a k step: past ~1.6 a step (SmolLM2's qkv at 32 distinct r16) the
  // GEMM's own loads queue behind the prefetches.
  static constexpr int64_t kLinesPerStep = 2;
  // At most this much a thread: what its L2 and its part of L3 keep until the BGMV reads it.
  static constexpr int64_t kBudgetLines = (3 << 20) / 2 / 64;

  Warmer(const Spans& spans, int64_t threads, int64_t t, int64_t steps)
      : span_(spans.data()), end_(spans.data() + spans.size()) {
    int64_t lines = 0;
    for (const auto& s : spans) lines += lines_of(s);
    int64_t skip = lines * t / threads;
    steps = std::max<int64_t>(1, steps);
    // the first lines of the thread's share, in the GEMM's last steps (one line a step; more,
    // up to kLinesPerStep, where the lines outnumber the steps), so they are still in cache when
    // the BGMV reads them
    lines_ = left_ = std::min({lines * (t + 1) / threads - skip, kBudgetLines, kLinesPerStep * steps});
    steps_ = std::max<int64_t>(1, std::min(steps, lines_));
    wait_ = steps - steps_;
    while (span_ != end_ && skip >= lines_of(*span_)) skip -= lines_of(*span_++);
    line_ = skip;
  }

  bool active() const { return left_ > 0 && span_ != end_; }

  // One k step: after the first `wait_`, lines / steps of them, the remainder carried over in
  // `credit_`.
  void operator()() {
    if (wait_ > 0) {
      --wait_;
      return;
    }
    for (credit_ += lines_; credit_ >= steps_ && left_ > 0 && span_ != end_; credit_ -= steps_, --left_) {
      __builtin_prefetch(span_->start + 64 * line_, 0, 3);
      if (++line_ == lines_of(*span_)) {
        ++span_;
        line_ = 0;
      }
    }
  }

 private:
  static int64_t lines_of(const Span& s) { return (s.bytes + 63) / 64; }

  const Span* span_;
  const Span* end_;
  int64_t line_ = 0, lines_ = 0, left_ = 0, steps_ = 1, wait_ = 0, credit_ = 0;
};

// One pass of a tile: rows [0, R) of x times C groups over words [k0, k1) of k, added in k order
// to the running fp32 sums acc (row stride kMaxGroups * 16; zeros first when `first`). Splitting
// k into passes keeps each sum's order, so its bits.
template <class T>
struct Pass {
  const T* x;
  int64_t xs;  // row stride of x
  const T* w;  // the block's first group
  int64_t gs, k0, k1, K;
  bool first, last;
  Prefetch<T> prefetch;
  Warmer* warm;  // called each k step by the tiles that warm
  float* acc;
  const T* bias;  // written to out (row stride os, channels [n0, N)) after the last pass
  T* out;
  int64_t os, n0, N;
};

constexpr int64_t kAccStride = kMaxGroups * kLanes;

#if defined(__AVX512F__)
// How a register tile multiplies one word of k: a 64-byte weight load, x's word broadcast, and
// the multiply-add into 16 fp32 sums (VDPBF16PS's pair sum for bf16, an FMA for fp32).
template <class T>
struct WordOps;

#if defined(__AVX512BF16__)
template <>
struct WordOps<bf16_t> {
  using reg = __m512bh;
  static reg weights(const bf16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static reg x(const bf16_t* row, int64_t k) { return (__m512bh)_mm512_set1_epi32(x_word(row, k)); }
  static __m512 madd(__m512 sums, reg x, reg w) { return _mm512_dpbf16_ps(sums, x, w); }
};
#endif

template <>
struct WordOps<float> {
  using reg = __m512;
  static reg weights(const float* p) { return _mm512_loadu_ps(p); }
  static reg x(const float* row, int64_t k) { return _mm512_set1_ps(row[k]); }
  static __m512 madd(__m512 sums, reg x, reg w) { return _mm512_fmadd_ps(x, w, sums); }
};
#endif

// A pass's sums; with Warm, each k step also calls p.warm (its own instantiation, so the tiles of a
// GEMM with nothing to warm carry no test in their loop: that test cost ~1% of a batch-32 step).
template <int R, int C, class T, bool Warm>
void tile_sums(const Pass<T>& p) {
#if defined(__AVX512F__)
  if constexpr (kTiled<T>) {
    using Ops = WordOps<T>;
    __m512 sums[R][C];  // fully unrolled, so the sums live in registers
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
        sums[r][c] = p.first ? _mm512_setzero_ps() : _mm512_loadu_ps(p.acc + r * kAccStride + c * kLanes);
    for (int64_t k = p.k0; k < p.k1; ++k) {
      typename Ops::reg wv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) wv[c] = Ops::weights(p.w + c * p.gs + k * kPerWord<T> * kLanes);
      p.prefetch(p.gs, k - p.k0);
      if constexpr (Warm) (*p.warm)();  // a template flag: no test in the loop that never warms
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const typename Ops::reg xb = Ops::x(p.x + r * p.xs, k);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) sums[r][c] = Ops::madd(sums[r][c], xb, wv[c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(p.acc + r * kAccStride + c * kLanes, sums[r][c]);
    return;
  }
#endif
  // the plain loop: same layout, fp32 sums in k order, each step one explicit fused multiply-add
  // (the compiler contracts a * b + c as it likes per instantiation, and each row must give the
  // same bits in every tile)
  constexpr int P = kPerWord<T>;
  if (p.first)
    for (int r = 0; r < R; ++r) std::fill(p.acc + r * kAccStride, p.acc + r * kAccStride + C * kLanes, 0.f);
  for (int64_t k = p.k0 * P; k < std::min(p.k1 * P, p.K); ++k)
    for (int c = 0; c < C; ++c) {
      const T* wk = p.w + c * p.gs + (k / P) * P * kLanes + k % P;
      for (int r = 0; r < R; ++r) {
        const float xk = Elem<T>::to_f(p.x[r * p.xs + k]);
        float* acc = p.acc + r * kAccStride + c * kLanes;
        for (int j = 0; j < kLanes; ++j) acc[j] = std::fma(xk, Elem<T>::to_f(wk[j * P]), acc[j]);
      }
    }
}

// A pass of R rows x C groups; after the last, the sums plus the bias rounded into out for the
// channels [n0, n0 + 16C) that are < N.
template <int R, int C, class T, bool Warm>
void tile(const Pass<T>& p) {
  using E = Elem<T>;
  tile_sums<R, C, T, Warm>(p);
  if (!p.last) return;
  const int64_t count = std::min<int64_t>(C * kLanes, p.N - p.n0);
  for (int r = 0; r < R; ++r) {
    const float* acc = p.acc + r * kAccStride;
    T* row = p.out + r * p.os + p.n0;
    const T* bias = p.bias == nullptr ? nullptr : p.bias + p.n0;
    int64_t n = 0;
    for (; n + Vec::W <= count; n += Vec::W) {
      Vec::reg v = Vec::load(acc + n);
      if (bias != nullptr) v = Vec::add(v, E::load(bias + n));
      E::store(row + n, v);
    }
    for (; n < count; ++n) row[n] = E::from_f(bias != nullptr ? acc[n] + E::to_f(bias[n]) : acc[n]);
  }
}

// Bytes of a block's weights one pass may read, so that a block's later row tiles re-read it from
// L2 (1 MB on Zen 4, 2 MB on Sapphire Rapids, 512 KB on Zen 3): Llama-3.2-1B's down projection
// (K = 8192, 1 MB per block of 4 groups) at 8 rows ran at 0.6x its one-row time, from memory twice.
constexpr int64_t kPassBytes = 128 * 1024;

}  // namespace

template <class T>
bool packed_gemm_tiled() {
  return kTiled<T>;
}

template <class T>
void packed_gemm(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out, const Spans& warm) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1), G = w.size(0), Kw = w.size(1);
  if (M == 0 || N == 0) return;  // an empty step (no tokens) or an empty matrix
  const int64_t gs = Kw * kPerWord<T> * kLanes, os = out.stride(0);
  static constexpr auto plain = tile_table<kMaxRows, kMaxGroups>(
      [](auto r, auto c) { return &tile<decltype(r)::value, decltype(c)::value, T, false>; });
  static constexpr auto warming = tile_table<kMaxRows, kMaxGroups>(
      [](auto r, auto c) { return &tile<decltype(r)::value, decltype(c)::value, T, true>; });
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
  const int64_t tiles = (M + kMaxRows - 1) / kMaxRows;
  // one row tile streams its block once, whole; several re-read it, in passes that fit L2
  const int64_t chunk = tiles == 1 ? Kw : std::max<int64_t>(1, kPassBytes / (kMaxGroups * 64));
  // each thread takes a contiguous run of groups and streams them once, every row against each
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = G * t / threads, last = G * (t + 1) / threads;
    std::vector<float> acc(tiles * kMaxRows * kAccStride);
    // every row tile steps through all of Kw in each of the thread's blocks
    Warmer warmer(warm, threads, t, (last - first + kMaxGroups - 1) / kMaxGroups * tiles * Kw);
    const auto& table = warmer.active() ? warming : plain;
    for (int64_t g = first; g < last; g += kMaxGroups) {
      const int64_t groups = std::min<int64_t>(kMaxGroups, last - g);
      const int64_t next_groups = std::min<int64_t>(kMaxGroups, std::max<int64_t>(last - g - groups, 0));
      const T* block = wp + g * gs;
      for (int64_t k0 = 0; k0 < Kw; k0 += chunk) {
        const int64_t k1 = std::min(Kw, k0 + chunk);
        // the row tiles of this pass share the prefetch of what the next one reads, so it comes
        // from memory while this pass re-reads its own lines from L2 (SmolLM2's matrices at 32
        // rows, weights cold: ~3% faster; they run at ~82% of the bf16 peak cold, 93-97% in cache)
        Prefetch<T> next{block, groups, k1, std::min(chunk, Kw - k1)};
        if (k1 == Kw) next = {block + groups * gs, next_groups, 0, std::min(chunk, Kw)};
        const int64_t share = (next.count + tiles - 1) / tiles;
        for (int64_t m = 0, i = 0; m < M; m += kMaxRows, ++i) {
          const int64_t rows = std::min<int64_t>(kMaxRows, M - m);
          Prefetch<T> mine = next;
          mine.k += i * share;
          mine.count = std::min(share, next.count - i * share);
          const Pass<T> pass{xp + m * xs, xs,           block, gs,  k0,          k1, K, k0 == 0, k1 == Kw,
                             mine,        &warmer, acc.data() + m * kAccStride, bp, op + m * os, os, g * kLanes, N};
          table[rows - 1][groups - 1](pass);
        }
      }
    }
  }
}

LORASERVE_INSTANTIATE(packed_gemm, (at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor, const Spans&))
template bool packed_gemm_tiled<float>();
template bool packed_gemm_tiled<bf16_t>();

}  // namespace kernels
