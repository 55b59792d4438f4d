// Batched LoRA, one adapter slot per token (layout of A, B and slot_info at the entry point in
// cpu_kernels.cpp). Per tile of up to kTile consecutive tokens on one slot: the rank dots
// h = x . A rows, then out += h @ B rows, all in fp32; bf16 rounds only when it writes out.
#include <algorithm>
#include <utility>
#include <vector>

#include "kernels.h"

using simd::bf16_t;
using simd::Elem;
using simd::Vec;

namespace {

constexpr int kTile = 4;  // consecutive tokens of one slot that share each read of its rows
constexpr int kChunks = Vec::W == 16 ? 4 : 2;  // B columns per pass: kChunks vectors per token

// out[g] = x[g] . a for N vectors x[g], reading a once.
template <int N, class T>
inline void dots(const T* const* x, const T* a, int64_t len, float* out) {
  using E = Elem<T>;
  Vec::reg acc[N];
  for (int g = 0; g < N; ++g) acc[g] = Vec::zero();
  int64_t i = 0;
  for (; i + Vec::W <= len; i += Vec::W) {
    const Vec::reg row = E::load(a + i);
    for (int g = 0; g < N; ++g) acc[g] = Vec::fmadd(E::load(x[g] + i), row, acc[g]);
  }
  for (int g = 0; g < N; ++g) {
    float total = Vec::sum(acc[g]);
    for (int64_t j = i; j < len; ++j) total += E::to_f(x[g][j]) * E::to_f(a[j]);
    out[g] = total;
  }
}

#if defined(__AVX512BF16__)
// bf16 x bf16 with VDPBF16PS: 32 products a step straight from memory, no widening. Two
// accumulators per token, whatever N: they hide the instruction's latency for a lone token, and
// every tile size then sums a token's products in one order, so its bits do not depend on
// whether its neighbours in the step share its adapter (and its tile).
template <int N>
inline void dots(const bf16_t* const* x, const bf16_t* a, int64_t len, float* out) {
  constexpr int U = 2;  // accumulators per token
  auto pairs = [](const bf16_t* p) { return (__m512bh)_mm512_loadu_si512(p); };
  __m512 acc[N][U];
  for (int g = 0; g < N; ++g)
    for (int u = 0; u < U; ++u) acc[g][u] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 * U <= len; i += 32 * U)
    for (int u = 0; u < U; ++u) {
      const __m512bh row = pairs(a + i + 32 * u);
      for (int g = 0; g < N; ++g) acc[g][u] = _mm512_dpbf16_ps(acc[g][u], pairs(x[g] + i + 32 * u), row);
    }
  for (; i + 32 <= len; i += 32)
    for (int g = 0; g < N; ++g) acc[g][0] = _mm512_dpbf16_ps(acc[g][0], pairs(x[g] + i), pairs(a + i));
  float total[N];
  for (int g = 0; g < N; ++g)
    total[g] = _mm512_reduce_add_ps(_mm512_add_ps(acc[g][0], acc[g][1]));
  for (; i < len; ++i)
    for (int g = 0; g < N; ++g) total[g] += float(x[g][i]) * float(a[i]);
  for (int g = 0; g < N; ++g) out[g] = total[g];
}
#endif

// For each of N tokens g: out[g][col + o:col + len] += sum over i < ranks of h[i * h_stride + g] *
// b[i * b_stride + o:len], C vectors of columns a pass while they fill one; returns the columns
// done. The sums stay in registers (in rank order, fp32), each B chunk is read once for all N
// tokens, and out is rounded once.
template <int N, int C, class T>
inline int64_t expand_cols(T* const* out, int64_t col, const float* h, int64_t h_stride, const T* b,
                           int64_t b_stride, int64_t ranks, int64_t o, int64_t len) {
  using E = Elem<T>;
  for (; o + C * Vec::W <= len; o += C * Vec::W) {
    Vec::reg acc[N][C];
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < C; ++c) acc[g][c] = Vec::zero();
    for (int64_t i = 0; i < ranks; ++i) {
      const T* row = b + i * b_stride + o;
      Vec::reg chunk[C];
      for (int c = 0; c < C; ++c) chunk[c] = E::load(row + c * Vec::W);
      for (int g = 0; g < N; ++g) {
        const Vec::reg hv = Vec::set1(h[i * h_stride + g]);
        for (int c = 0; c < C; ++c) acc[g][c] = Vec::fmadd(hv, chunk[c], acc[g][c]);
      }
    }
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < C; ++c) {
        T* dst = out[g] + col + o + c * Vec::W;
        E::store(dst, Vec::add(E::load(dst), acc[g][c]));
      }
  }
  return o;
}

// The same over columns [0, len): kChunks vectors a pass, then one, then one column.
template <int N, class T>
inline void expand(T* const* out, int64_t col, const float* h, int64_t h_stride, const T* b, int64_t b_stride,
                   int64_t ranks, int64_t len) {
  using E = Elem<T>;
  int64_t o = expand_cols<N, kChunks>(out, col, h, h_stride, b, b_stride, ranks, 0, len);
  o = expand_cols<N, 1>(out, col, h, h_stride, b, b_stride, ranks, o, len);
  for (; o < len; ++o)
    for (int g = 0; g < N; ++g) {
      float sum = 0.0f;
      for (int64_t i = 0; i < ranks; ++i) sum += h[i * h_stride + g] * E::to_f(b[i * b_stride + o]);
      out[g][col + o] = E::from_f(E::to_f(out[g][col + o]) + sum);
    }
}

// One tile of N <= kTile consecutive tokens on one adapter slot.
template <int N, class T>
void bgmv_tile(const T* const* x, T* const* out, const T* a, const T* b, int64_t in, int64_t O, int64_t k,
               int64_t ranks, int64_t modules, const int64_t* cs, const int64_t* cl, float* h) {
  for (int64_t r = 0; r < ranks * k; ++r) {
    float* hr = h + r * kTile;
    if ((modules >> (r % k)) & 1) {
      dots<N>(x, a + r * in, in, hr);
    } else {
      for (int g = 0; g < N; ++g) hr[g] = 0.0f;
    }
  }
  for (int64_t j = 0; j < k; ++j)
    if ((modules >> j) & 1) expand<N>(out, cs[j], h + j * kTile, k * kTile, b + cs[j], O, ranks, cl[j]);
}

}  // namespace

namespace kernels {

template <class T>
void bgmv(at::Tensor x, at::Tensor slots, at::Tensor a, at::Tensor b, at::Tensor out, int64_t k, int64_t rank,
          at::Tensor col_start, at::Tensor col_len, at::Tensor slot_info) {
  const int64_t tokens = x.size(0), in = x.size(1), KA = a.size(1), R = b.size(1), O = b.size(2);
  const T* xp = x.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* cs = col_start.data_ptr<int64_t>();
  const int64_t* cl = col_len.data_ptr<int64_t>();
  const int64_t* info = slot_info.data_ptr<int64_t>();
  const int64_t out_stride = out.stride(0);
  std::vector<std::pair<int64_t, int64_t>> tiles;  // [first, end): one slot, at most kTile tokens
  for (int64_t t = 0; t < tokens;) {
    if (sp[t] < 0) {
      ++t;
      continue;
    }
    const int64_t first = t;
    while (t < tokens && t - first < kTile && sp[t] == sp[first]) ++t;
    tiles.emplace_back(first, t);
  }
  const int64_t count = int64_t(tiles.size());
#pragma omp parallel
  {
    std::vector<float> h(rank * k * kTile);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < count; ++tile) {
      const auto [first, end] = tiles[tile];
      const int64_t s = sp[first], ranks = std::min(rank, info[2 * s]), modules = info[2 * s + 1];
      const T* xs[kTile];
      T* outs[kTile];
      for (int64_t g = 0; g < end - first; ++g) {
        xs[g] = xp + (first + g) * in;
        outs[g] = op + (first + g) * out_stride;
      }
      const T* as = ap + s * KA * in;
      const T* bs = bp + s * R * O;
      switch (end - first) {
        case 1: bgmv_tile<1>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 2: bgmv_tile<2>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 3: bgmv_tile<3>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        default: bgmv_tile<kTile>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data());
      }
    }
  }
}

LORASERVE_INSTANTIATE(bgmv, (at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t,
                              at::Tensor, at::Tensor, at::Tensor))

}  // namespace kernels
