// Decode attention over the paged KV cache: one query token per row (a decoding sequence, or a prompt
// token over its past and the tokens before it), GQA by KV head; scores, softmax and the weighted sum
// in fp32 whatever the cache's element type T.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels.h"

using simd::bf16_t;
using simd::Elem;
using simd::Vec;

namespace {

#if defined(__AVX512BF16__)
template <class T>
constexpr bool kBf16Dot = std::is_same_v<T, bf16_t>;  // scores by VDPBF16PS (attend_blocked)
#else
template <class T>
constexpr bool kBf16Dot = false;
#endif

// x[0:n] = softmax(x[0:n]) in place, after Gemma 2's logit cap when softcap > 0:
// x = softcap * tanh(x / softcap).
void softmax_inplace(float* x, int64_t n, float softcap) {
  if (softcap > 0.0f)
    for (int64_t l = 0; l < n; ++l) x[l] = softcap * std::tanh(x[l] / softcap);
  float peak = -INFINITY;
  int64_t l = 0;
  if (n >= Vec::W) {  // max is exact in any order: the same peak as one pass
    Vec::reg top = Vec::load(x);
    for (l = Vec::W; l + Vec::W <= n; l += Vec::W) top = Vec::max(top, Vec::load(x + l));
    float lanes[Vec::W];
    Vec::store(lanes, top);
    for (const float lane : lanes) peak = std::max(peak, lane);
  }
  for (; l < n; ++l) peak = std::max(peak, x[l]);
  const Vec::reg shift = Vec::set1(peak);
  Vec::reg sum = Vec::zero();
  for (l = 0; l + Vec::W <= n; l += Vec::W) {
    const Vec::reg e = simd::exp(Vec::sub(Vec::load(x + l), shift));
    Vec::store(x + l, e);
    sum = Vec::add(sum, e);
  }
  float total = Vec::sum(sum);
  for (; l < n; ++l) {
    x[l] = std::exp(x[l] - peak);
    total += x[l];
  }
  const float norm = 1.0f / total;
  const Vec::reg scale = Vec::set1(norm);
  for (l = 0; l + Vec::W <= n; l += Vec::W) Vec::store(x + l, Vec::mul(Vec::load(x + l), scale));
  for (; l < n; ++l) x[l] *= norm;
}

// One (sequence, KV head) of decode attention. `group` query heads (already scaled, fp32) share
// it; position l's key is row l % bs of block blocks[l / bs], whose rows for this head start at
// k_cache + blocks[l / bs] * block_stride (k_cache already offset to the head). Keys [first, L)
// are attended (first > 0: a sliding window). acc (group, d) receives the output.
template <class T>
struct Unit {
  const float* query;  // (group, d), scaled; not filled where kBf16Dot<T> (those scores read q_raw)
  const T* q_raw;      // the group's first head of q as the model gave it, heads q_head apart
  int64_t q_head;
  float scale;
  const T* k_cache;
  const T* v_cache;
  const int64_t* blocks;
  int64_t block_stride, bs, group, first, L, d;
  float softcap;
  float* scores;  // (group, L)
  float* acc;

  // f(start, n, rows) for each run of positions [start, start + n) in one block, whose n rows of
  // `cache` are contiguous: one division per block, not per position. Before each run, the next
  // run's rows of `cache` (and this run's rows of `also`, read in a later pass) are prefetched:
  // a sequence's blocks lie apart, each a few KB, too short for the hardware prefetcher (batch
  // 32, SmolLM2's heads, 80-450 keys, cold: 1.2-1.35x, AVX512-BF16 EPYC).
  template <class F>
  void runs(const T* cache, F&& f, const T* also = nullptr) const {
    const int64_t bytes = bs * d * int64_t(sizeof(T));
    for (int64_t start = first; start < L;) {
      const int64_t offset = start % bs, n = std::min(bs - offset, L - start);
      const int64_t at = blocks[start / bs] * block_stride + offset * d;
      if (start + n < L) {
        const char* next = reinterpret_cast<const char*>(cache + blocks[(start + n) / bs] * block_stride);
        for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(next + line, 0, 3);
      }
      if (also != nullptr) {
        const char* later = reinterpret_cast<const char*>(also + at);
        for (int64_t line = 0; line < n * d * int64_t(sizeof(T)); line += 64) __builtin_prefetch(later + line, 0, 2);
      }
      f(start, n, cache + at);
      start += n;
    }
  }
};

// x . y[0:n] for an fp32 x, two accumulators to hide the FMA latency.
template <class T>
inline float dot(const float* x, const T* y, int64_t n) {
  using E = Elem<T>;
  Vec::reg a0 = Vec::zero(), a1 = Vec::zero();
  int64_t i = 0;
  for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
    a0 = Vec::fmadd(Vec::load(x + i), E::load(y + i), a0);
    a1 = Vec::fmadd(Vec::load(x + i + Vec::W), E::load(y + i + Vec::W), a1);
  }
  for (; i + Vec::W <= n; i += Vec::W) a0 = Vec::fmadd(Vec::load(x + i), E::load(y + i), a0);
  float total = Vec::sum(Vec::add(a0, a1));
  for (; i < n; ++i) total += x[i] * E::to_f(y[i]);
  return total;
}

// acc[0:C*W] += sum over l < n of p[l] * values[l * d + 0:C*W].
template <int C, class T>
inline void weighted_sum(const float* p, const T* values, int64_t d, int64_t n, float* acc) {
  Vec::reg sum[C];
  for (int c = 0; c < C; ++c) sum[c] = Vec::load(acc + c * Vec::W);
  for (int64_t l = 0; l < n; ++l) {
    const Vec::reg weight = Vec::set1(p[l]);
    const T* row = values + l * d;
    for (int c = 0; c < C; ++c) sum[c] = Vec::fmadd(weight, Elem<T>::load(row + c * Vec::W), sum[c]);
  }
  for (int c = 0; c < C; ++c) Vec::store(acc + c * Vec::W, sum[c]);
}

// Any head_dim d: one dot per (key, head), then per head the weighted sum over each block's rows,
// 8 vectors of columns at a time in registers.
template <class T>
void attend(const Unit<T>& u) {
  const int64_t d = u.d, L = u.L;
  u.runs(u.k_cache, [&](int64_t start, int64_t n, const T* keys) {
    for (int64_t l = 0; l < n; ++l)
      for (int64_t g = 0; g < u.group; ++g)
        u.scores[g * L + start + l] = dot(u.query + g * d, keys + l * d, d);
  });
  for (int64_t g = 0; g < u.group; ++g) softmax_inplace(u.scores + g * L + u.first, L - u.first, u.softcap);
  std::fill(u.acc, u.acc + u.group * d, 0.0f);
  constexpr int64_t wide = 8 * Vec::W;  // 8 accumulators stay in registers
  u.runs(u.v_cache, [&](int64_t start, int64_t n, const T* values) {
    for (int64_t g = 0; g < u.group; ++g) {
      const float* p = u.scores + g * L + start;
      float* out = u.acc + g * d;
      int64_t c0 = 0;
      for (; c0 + wide <= d; c0 += wide) weighted_sum<8>(p, values + c0, d, n, out + c0);
      for (; c0 + Vec::W <= d; c0 += Vec::W) weighted_sum<1>(p, values + c0, d, n, out + c0);
      for (; c0 < d; ++c0)
        for (int64_t l = 0; l < n; ++l) out[c0] += p[l] * Elem<T>::to_f(values[l * d + c0]);
    }
  });
}

#if defined(__AVX512BF16__)
// (sum of v[0]'s lanes, ..., sum of v[15]'s lanes) as one vector: a transpose-and-add tree,
// 45 instructions for 16 sums.
inline __m512 sum16(const __m512 (&v)[16]) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] of v[2i], v[2i+1]
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: that lane's sums of v[4i .. 4i+3]
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)  // lanes (0+1, 2+3) of b[2i], then of b[2i+1]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  // lane j: the full sums of v[4j .. 4j+3]
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

// q . k for one bf16 query and key row of d (a multiple of 32) as 16 lanes of fp32 pair sums.
template <int64_t d>
inline __m512 dot_bf16(const bf16_t* q, const bf16_t* k) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 32)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + i), (__m512bh)_mm512_loadu_si512(k + i));
  return acc;
}
#endif

// acc for heads [g0, g0 + H): their softmaxed scores times the values, all H heads' sums in
// registers, each value row loaded (bf16: widened) once for them.
template <int C, int H, class T>
void weigh_values(const Unit<T>& u, int64_t g0) {
  constexpr int64_t d = C * Vec::W;
  const int64_t L = u.L;
  Vec::reg a[H][C];
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) a[h][c] = Vec::zero();
  u.runs(u.v_cache, [&](int64_t start, int64_t n, const T* values) {
    for (int64_t l = 0; l < n; ++l) {
      Vec::reg p[H];
      for (int h = 0; h < H; ++h) p[h] = Vec::set1(u.scores[(g0 + h) * L + start + l]);
      for (int c = 0; c < C; ++c) {
        const Vec::reg v = Elem<T>::load(values + l * d + c * Vec::W);
        for (int h = 0; h < H; ++h) a[h][c] = Vec::fmadd(p[h], v, a[h][c]);
      }
    }
  });
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) Vec::store(u.acc + (g0 + h) * d + c * Vec::W, a[h][c]);
}

// head_dim d = C * W (64 and 128 with AVX-512): each key and value row is loaded (bf16: widened)
// once into C registers for all the heads that share it (bf16 with AVX512-BF16: multiplied as
// bf16 pairs, no widening); up to 4 heads' sums (2 at d = 128) stay in registers.
template <int C, class T>
void attend_blocked(const Unit<T>& u) {
  using E = Elem<T>;
  constexpr int64_t d = C * Vec::W;
  const int64_t L = u.L;
  u.runs(u.k_cache, [&](int64_t start, int64_t n, const T* keys) {
    int64_t l = 0;
#if defined(__AVX512BF16__)
    if constexpr (kBf16Dot<T>) {
      // bf16 keys times the model's bf16 query by VDPBF16PS (no widening; each product exact in
      // fp32), scaled after, as the PyTorch path scales q @ k^T; 16 keys' dot vectors summed
      // across lanes together (sum16), not one full reduction each
      for (; l + 16 <= n; l += 16)
        for (int64_t g = 0; g < u.group; ++g) {
          __m512 dots[16];
          for (int j = 0; j < 16; ++j) dots[j] = dot_bf16<d>(u.q_raw + g * u.q_head, keys + (l + j) * d);
          _mm512_storeu_ps(u.scores + g * L + start + l, _mm512_mul_ps(sum16(dots), _mm512_set1_ps(u.scale)));
        }
      for (; l < n; ++l)
        for (int64_t g = 0; g < u.group; ++g)
          u.scores[g * L + start + l] = _mm512_reduce_add_ps(dot_bf16<d>(u.q_raw + g * u.q_head, keys + l * d)) * u.scale;
      return;
    }
#endif
    for (; l < n; ++l) {
      Vec::reg key[C];
      for (int c = 0; c < C; ++c) key[c] = E::load(keys + l * d + c * Vec::W);
      for (int64_t g = 0; g < u.group; ++g) {
        Vec::reg dot = Vec::mul(Vec::load(u.query + g * d), key[0]);
        for (int c = 1; c < C; ++c) dot = Vec::fmadd(Vec::load(u.query + g * d + c * Vec::W), key[c], dot);
        u.scores[g * L + start + l] = Vec::sum(dot);
      }
    }
  }, u.v_cache);
  for (int64_t g = 0; g < u.group; ++g) softmax_inplace(u.scores + g * L + u.first, L - u.first, u.softcap);
  // up to 4 heads' sums (2 at d = 128) in registers per pass over the values (H * C + C of the
  // 32): each value row is loaded (bf16: widened) once per pass
  constexpr int64_t most = C <= 4 ? 4 : 2;
  for (int64_t g0 = 0; g0 < u.group; g0 += most) {
    switch (std::min(most, u.group - g0)) {
      case 1:
        weigh_values<C, 1>(u, g0);
        break;
      case 2:
        weigh_values<C, 2>(u, g0);
        break;
      case 3:
        if constexpr (most >= 3) weigh_values<C, 3>(u, g0);
        break;
      default:
        if constexpr (most >= 4) weigh_values<C, 4>(u, g0);
        break;
    }
  }
}

// How much of a unit prefetch_blocks brings in: 512 KB of keys and values (1,024 positions at head
// dim 128 in bf16), half of a Zen 4 core's L2; later blocks come in one ahead (`Unit::runs`).
// Batch 32, KV cold, AVX512-BF16 Zen 4: the kernel 1.15-1.26x on SmolLM2's heads and 1.08-1.20x
// on Qwen3-0.6B's from 48 to 1,000 keys; a decode step 1.03-1.07x from 64 to 450 keys.
constexpr int64_t kNextBytes = 512 << 10;

// A unit's keys and values, up to kNextBytes of them, towards L2 before the unit starts: its few
// KB of scattered blocks would otherwise come in one block ahead, too late to hide the memory's
// latency when the keys are few. Blocks of positions [first, L), `count` at most; each block's
// rows for the head start at cache + blocks[j] * block_stride + offset.
template <class T>
void prefetch_blocks(const T* keys, const T* values, const int64_t* blocks, int64_t first, int64_t L, int64_t bs,
                     int64_t d, int64_t block_stride, int64_t offset, int64_t count) {
  const int64_t bytes = bs * d * int64_t(sizeof(T));
  for (int64_t j = first / bs; j * bs < L && j < first / bs + count; ++j) {
    const char* k = reinterpret_cast<const char*>(keys + blocks[j] * block_stride + offset);
    const char* v = reinterpret_cast<const char*>(values + blocks[j] * block_stride + offset);
    for (int64_t line = 0; line < bytes; line += 64) {
      __builtin_prefetch(k + line, 0, 2);
      __builtin_prefetch(v + line, 0, 2);
    }
  }
}

}  // namespace

namespace kernels {

template <class T>
void decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache, at::Tensor block_tables,
                      at::Tensor lengths, at::Tensor out, double scale, int64_t window, double softcap,
                      const c10::optional<at::Tensor>& table_of) {
  using E = Elem<T>;
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2);
  const int64_t kvh = k_cache.size(1), bs = k_cache.size(2), group = H / kvh, M = block_tables.size(1);
  const int64_t q_stride = q.stride(0), q_head = q.stride(1);
  const int64_t o_stride = out.stride(0), o_head = out.stride(1);
  const T* qp = q.data_ptr<T>();
  const T* kc = k_cache.data_ptr<T>();
  const T* vc = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = lengths.data_ptr<int64_t>();
  // row b's block table: row table_of[b] of block_tables (prompt tokens of one span share one), or b
  const int64_t* table_rows = table_of.has_value() ? table_of->data_ptr<int64_t>() : nullptr;
  const auto table = [&](int64_t b) { return tables + (table_rows == nullptr ? b : table_rows[b]) * M; };
  const float fscale = float(scale);
  // the register paths need AVX-512's 32 registers, not AVX2's 16
  const bool blocked = Vec::W == 16 && (d == 4 * Vec::W || d == 8 * Vec::W);
  const auto start_of = [&](int64_t L) { return window > 0 ? std::max<int64_t>(0, L - window) : 0; };
  const int64_t next_blocks = std::max<int64_t>(1, kNextBytes / (2 * bs * d * int64_t(sizeof(T))));
#pragma omp parallel
  {
    std::vector<float> query(group * d), scores, acc(group * d);
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < B * kvh; ++unit) {
      if (unit + 1 < B * kvh) {  // the next unit's blocks, before this one starts (prefetch_blocks)
        const int64_t next = unit + 1, nL = lens[next / kvh];
        prefetch_blocks(kc, vc, table(next / kvh), start_of(nL), nL, bs, d, kvh * bs * d, (next % kvh) * bs * d,
                        next_blocks);
      }
      const int64_t b = unit / kvh, kh = unit % kvh, L = lens[b];
      scores.resize(group * L);
      if (!kBf16Dot<T> || !blocked)  // the VDPBF16PS scores read the model's q as it is
        for (int64_t g = 0; g < group; ++g) {
          const T* qh = qp + b * q_stride + (kh * group + g) * q_head;
          for (int64_t i = 0; i < d; ++i) query[g * d + i] = E::to_f(qh[i]) * fscale;
        }
      const int64_t head = kh * bs * d, first = start_of(L);
      const Unit<T> u{query.data(), qp + b * q_stride + kh * group * q_head, q_head, fscale, kc + head, vc + head,
                      table(b), kvh * bs * d, bs, group, first, L, d, float(softcap), scores.data(), acc.data()};
      if (blocked && d == 4 * Vec::W) {
        attend_blocked<4>(u);
      } else if (blocked) {
        attend_blocked<8>(u);
      } else {
        attend(u);
      }
      for (int64_t g = 0; g < group; ++g) {
        T* oh = op + b * o_stride + (kh * group + g) * o_head;
        int64_t i = 0;
        for (; i + Vec::W <= d; i += Vec::W) E::store(oh + i, Vec::load(acc.data() + g * d + i));
        for (; i < d; ++i) oh[i] = E::from_f(acc[g * d + i]);
      }
    }
  }
}

LORASERVE_INSTANTIATE(decode_attention, (at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                         at::Tensor, double, int64_t, double, const c10::optional<at::Tensor>&))

}  // namespace kernels
