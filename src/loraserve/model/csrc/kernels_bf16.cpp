// The bf16 kernels: all compute in fp32; bf16 roundings follow the PyTorch path (and Hugging
// Face's Llama) where it rounds, so results match it closely. Vectorised for AVX512-BF16 (the
// CPUs where dtype=auto picks bf16); other builds run the scalar loops. Inputs are checked by
// the entry points in cpu_kernels.cpp.
#include "kernels.h"

#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using bf16_t = uint16_t;

inline float to_f(bf16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as c10::BFloat16 does (NaN kept quiet).
inline bf16_t to_bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}

inline float round_bf(float f) { return to_f(to_bf(f)); }

inline bf16_t* bf_ptr(const torch::Tensor& t) { return reinterpret_cast<bf16_t*>(t.data_ptr()); }

// Dot product of two bf16 vectors in fp32.
inline float dot_bf16(const bf16_t* x, const bf16_t* a, int64_t n) {
  int64_t i = 0;
  float total = 0.0f;
#if defined(__AVX512BF16__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(a + i));
    acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(x + i + 32),
                            (__m512bh)_mm512_loadu_si512(a + i + 32));
  }
  for (; i + 32 <= n; i += 32)
    acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(a + i));
  total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) total += to_f(x[i]) * to_f(a[i]);
  return total;
}

// acc[0:n] += h * b[0:n], b in bf16.
inline void axpy_bf16(float* acc, float h, const bf16_t* b, int64_t n) {
  int64_t o = 0;
#if defined(__AVX512F__)
  const __m512 hv = _mm512_set1_ps(h);
  for (; o + 16 <= n; o += 16) {
    __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(b + o))), 16);
    _mm512_storeu_ps(acc + o, _mm512_fmadd_ps(hv, _mm512_castsi512_ps(wide), _mm512_loadu_ps(acc + o)));
  }
#endif
  for (; o < n; ++o) acc[o] += h * to_f(b[o]);
}

#if defined(__AVX512BF16__)
inline __m512 load_bf16x16(const bf16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

inline void store_bf16x16(bf16_t* p, __m512 v) {  // round to nearest even
  _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
}

// exp(x) to about 1 ulp: x = n ln2 + r, e^r by Cephes' polynomial, scaled by 2^n.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-103.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

// Dot product of an fp32 vector with a bf16 one.
inline float dot_f32_bf16(const float* q, const bf16_t* k, int64_t n) {
  int64_t i = 0;
  float total = 0.0f;
#if defined(__AVX512BF16__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load_bf16x16(k + i), acc);
  total = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) total += q[i] * to_f(k[i]);
  return total;
}

// x[0:n] = softmax(x[0:n]) in place.
inline void softmax_inplace(float* x, int64_t n) {
  float peak = -INFINITY;
  for (int64_t l = 0; l < n; ++l) peak = std::max(peak, x[l]);
  float total = 0.0f;
  int64_t l = 0;
#if defined(__AVX512BF16__)
  const __m512 shift = _mm512_set1_ps(peak);
  __m512 sum = _mm512_setzero_ps();
  for (; l + 16 <= n; l += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + l), shift));
    _mm512_storeu_ps(x + l, e);
    sum = _mm512_add_ps(sum, e);
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; l < n; ++l) {
    x[l] = std::exp(x[l] - peak);
    total += x[l];
  }
  const float norm = 1.0f / total;
  for (l = 0; l < n; ++l) x[l] *= norm;
}

// Gemma 2's logit cap (softcap > 0: x = softcap * tanh(x / softcap)), then softmax, over x[0:n].
inline void cap_and_softmax(float* x, int64_t n, float softcap) {
  if (softcap > 0.0f)
    for (int64_t l = 0; l < n; ++l) x[l] = softcap * std::tanh(x[l] / softcap);
  softmax_inplace(x, n);
}

#if defined(__AVX512BF16__)
// One (sequence, KV head) of decode attention with head_dim = 16*C over a paged cache (see
// f32's attend_unit for the addressing): each key and value row is loaded and widened once for
// all `group` query heads that share it.
template <int C>
void attend_unit(const float* query, const bf16_t* k_cache, const bf16_t* v_cache, const int64_t* blocks,
                 int64_t block_stride, int64_t bs, float* scores, float* acc, int64_t group, int64_t first,
                 int64_t L, float softcap) {
  constexpr int64_t d = 16 * C;
  for (int64_t l = first; l < L; ++l) {
    const bf16_t* key_row = k_cache + blocks[l / bs] * block_stride + (l % bs) * d;
    __m512 key[C];
    for (int c = 0; c < C; ++c) key[c] = load_bf16x16(key_row + 16 * c);
    for (int64_t g = 0; g < group; ++g) {
      __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(query + g * d), key[0]);
      for (int c = 1; c < C; ++c) dot = _mm512_fmadd_ps(_mm512_loadu_ps(query + g * d + 16 * c), key[c], dot);
      scores[g * L + l] = _mm512_reduce_add_ps(dot);
    }
  }
  for (int64_t g = 0; g < group; ++g) cap_and_softmax(scores + g * L + first, L - first, softcap);
  for (int64_t g0 = 0; g0 < group; g0 += 2) {  // two heads' accumulators stay in registers
    const bool pair = g0 + 1 < group;
    __m512 a0[C], a1[C];
    for (int c = 0; c < C; ++c) a0[c] = a1[c] = _mm512_setzero_ps();
    for (int64_t l = first; l < L; ++l) {
      const bf16_t* value_row = v_cache + blocks[l / bs] * block_stride + (l % bs) * d;
      const __m512 p0 = _mm512_set1_ps(scores[g0 * L + l]);
      const __m512 p1 = _mm512_set1_ps(pair ? scores[(g0 + 1) * L + l] : 0.0f);
      for (int c = 0; c < C; ++c) {
        const __m512 v = load_bf16x16(value_row + 16 * c);
        a0[c] = _mm512_fmadd_ps(p0, v, a0[c]);
        a1[c] = _mm512_fmadd_ps(p1, v, a1[c]);
      }
    }
    for (int c = 0; c < C; ++c) {
      _mm512_storeu_ps(acc + g0 * d + 16 * c, a0[c]);
      if (pair) _mm512_storeu_ps(acc + (g0 + 1) * d + 16 * c, a1[c]);
    }
  }
}
#endif

constexpr int kTile = 4;  // consecutive tokens of one slot that share each read of its rows

// dots[g] = x[g] . a for N bf16 vectors x[g] (N > 1), reading a once.
template <int N>
inline void dots_bf16(const bf16_t* const* x, const bf16_t* a, int64_t len, float* dots) {
  float total[N] = {};
  int64_t i = 0;
#if defined(__AVX512BF16__)
  __m512 acc[N];
  for (int g = 0; g < N; ++g) acc[g] = _mm512_setzero_ps();
  for (; i + 32 <= len; i += 32) {
    const __m512bh row = (__m512bh)_mm512_loadu_si512(a + i);
    for (int g = 0; g < N; ++g) acc[g] = _mm512_dpbf16_ps(acc[g], (__m512bh)_mm512_loadu_si512(x[g] + i), row);
  }
  for (int g = 0; g < N; ++g) total[g] = _mm512_reduce_add_ps(acc[g]);
#endif
  for (; i < len; ++i)
    for (int g = 0; g < N; ++g) total[g] += to_f(x[g][i]) * to_f(a[i]);
  for (int g = 0; g < N; ++g) dots[g] = total[g];
}

// For each of N tokens g: out[g][col + 0:len] += sum over i < ranks of h[i * h_stride + g] *
// b[i * b_stride + 0:len]. The sums stay in registers 64 columns at a time (in rank order, fp32),
// each B chunk is read once for all N tokens, and out is rounded once.
template <int N>
inline void expand_bf16(bf16_t* const* out, int64_t col, const float* h, int64_t h_stride, const bf16_t* b,
                        int64_t b_stride, int64_t ranks, int64_t len) {
  int64_t o = 0;
#if defined(__AVX512BF16__)
  for (; o + 64 <= len; o += 64) {
    __m512 acc[N][4];
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < ranks; ++i) {
      const bf16_t* row = b + i * b_stride + o;
      const __m512 chunk[4] = {load_bf16x16(row), load_bf16x16(row + 16), load_bf16x16(row + 32),
                               load_bf16x16(row + 48)};
      for (int g = 0; g < N; ++g) {
        const __m512 hv = _mm512_set1_ps(h[i * h_stride + g]);
        for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_fmadd_ps(hv, chunk[c], acc[g][c]);
      }
    }
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < 4; ++c) {
        bf16_t* dst = out[g] + col + o + 16 * c;
        store_bf16x16(dst, _mm512_add_ps(load_bf16x16(dst), acc[g][c]));
      }
  }
  for (; o + 16 <= len; o += 16) {
    __m512 acc[N];
    for (int g = 0; g < N; ++g) acc[g] = _mm512_setzero_ps();
    for (int64_t i = 0; i < ranks; ++i) {
      const __m512 chunk = load_bf16x16(b + i * b_stride + o);
      for (int g = 0; g < N; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(h[i * h_stride + g]), chunk, acc[g]);
    }
    for (int g = 0; g < N; ++g) {
      bf16_t* dst = out[g] + col + o;
      store_bf16x16(dst, _mm512_add_ps(load_bf16x16(dst), acc[g]));
    }
  }
#endif
  for (; o < len; ++o)
    for (int g = 0; g < N; ++g) {
      float sum = 0.0f;
      for (int64_t i = 0; i < ranks; ++i) sum += h[i * h_stride + g] * to_f(b[i * b_stride + o]);
      out[g][col + o] = to_bf(to_f(out[g][col + o]) + sum);
    }
}

// One tile of n <= kTile consecutive tokens on one adapter slot (see bgmv).
template <int N>
void bgmv_tile(const bf16_t* const* x, bf16_t* const* out, const bf16_t* a, const bf16_t* b, int64_t in,
               int64_t O, int64_t k, int64_t ranks, int64_t modules, const int64_t* cs, const int64_t* cl,
               float* h) {
  for (int64_t r = 0; r < ranks * k; ++r) {
    float* hr = h + r * kTile;
    if (!((modules >> (r % k)) & 1)) {
      for (int g = 0; g < N; ++g) hr[g] = 0.0f;
    } else if (N == 1) {
      hr[0] = dot_bf16(x[0], a + r * in, in);
    } else {
      dots_bf16<N>(x, a + r * in, in, hr);
    }
  }
  for (int64_t j = 0; j < k; ++j)
    if ((modules >> j) & 1) expand_bf16<N>(out, cs[j], h + j * kTile, k * kTile, b + cs[j], O, ranks, cl[j]);
}

}  // namespace

namespace bf16 {

// out (T, O) += per token t with slot s = slots[t] >= 0: (x[t] @ A[s]^T) @ B[s], for a fused group
// of k modules. x (T, in); A (S, R*k, in), row i*k + j = rank i of module j; B (S, R, O), row i =
// rank i of every module, module j in columns [col_start[j], col_start[j] + col_len[j]) — so each
// token's B rows are read as one contiguous stream. slot_info (S, 2): the adapter's rank and a
// bit mask of the group's modules it targets; only those rows are read (at most `rank` ranks).
// Consecutive tokens of one slot (a prompt being prefilled) share each read of its rows.
void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out,
          int64_t k, int64_t rank, torch::Tensor col_start, torch::Tensor col_len, torch::Tensor slot_info) {
  const int64_t T = x.size(0), in = x.size(1), KA = a.size(1), R = b.size(1), O = b.size(2);
  const bf16_t* xp = bf_ptr(x);
  const bf16_t* ap = bf_ptr(a);
  const bf16_t* bp = bf_ptr(b);
  bf16_t* op = bf_ptr(out);
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* cs = col_start.data_ptr<int64_t>();
  const int64_t* cl = col_len.data_ptr<int64_t>();
  const int64_t* info = slot_info.data_ptr<int64_t>();
  const int64_t out_stride = out.stride(0);
  std::vector<std::pair<int64_t, int64_t>> tiles;  // [first, end): one slot, at most kTile tokens
  for (int64_t t = 0; t < T;) {
    if (sp[t] < 0) {
      ++t;
      continue;
    }
    const int64_t first = t;
    while (t < T && t - first < kTile && sp[t] == sp[first]) ++t;
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
      const bf16_t* xs[kTile];
      bf16_t* outs[kTile];
      for (int64_t g = 0; g < end - first; ++g) {
        xs[g] = xp + (first + g) * in;
        outs[g] = op + (first + g) * out_stride;
      }
      const bf16_t* as = ap + s * KA * in;
      const bf16_t* bs = bp + s * R * O;
      switch (end - first) {
        case 1: bgmv_tile<1>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 2: bgmv_tile<2>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 3: bgmv_tile<3>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        default: bgmv_tile<kTile>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data());
      }
    }
  }
}

// RMSNorm with an optional residual add first: h += delta (in place, rounded to bf16), then
// out = w * bf16(h * rsqrt(mean(h^2) + eps)), Hugging Face's order of roundings.
void add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor w, double eps,
                  torch::Tensor out) {
  const int64_t T = h.size(0), D = h.size(1);
  bf16_t* hp = bf_ptr(h);
  const bf16_t* wp = bf_ptr(w);
  bf16_t* op = bf_ptr(out);
  bf16_t* dp = nullptr;
  int64_t d_stride = 0;
  if (delta.has_value()) {
    dp = bf_ptr(*delta);
    d_stride = delta->stride(0);
  }
  const int64_t h_stride = h.stride(0), o_stride = out.stride(0);
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    bf16_t* hr = hp + t * h_stride;
    if (dp != nullptr) {
      const bf16_t* dr = dp + t * d_stride;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) hr[i] = to_bf(to_f(hr[i]) + to_f(dr[i]));
    }
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < D; ++i) squares += to_f(hr[i]) * to_f(hr[i]);
    const float inv = 1.0f / std::sqrt(squares / float(D) + float(eps));
    bf16_t* orow = op + t * o_stride;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) orow[i] = to_bf(to_f(wp[i]) * round_bf(to_f(hr[i]) * inv));
  }
}

// SwiGLU's activation: out (T, I) = bf16(bf16(silu(gate)) * up) for gate_up (T, 2I) = [gate | up].
void silu_mul(torch::Tensor gate_up, torch::Tensor out) {
  const int64_t T = gate_up.size(0), I = out.size(1), in_stride = gate_up.stride(0), o_stride = out.stride(0);
  const bf16_t* gp = bf_ptr(gate_up);
  bf16_t* op = bf_ptr(out);
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const bf16_t* gate = gp + t * in_stride;
    const bf16_t* up = gate + I;
    bf16_t* orow = op + t * o_stride;
    int64_t i = 0;
#if defined(__AVX512BF16__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= I; i += 16) {
      const __m512 g = load_bf16x16(gate + i);
      const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
      const __m512 rounded = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(silu));
      store_bf16x16(orow + i, _mm512_mul_ps(rounded, load_bf16x16(up + i)));
    }
#endif
    for (; i < I; ++i) {
      const float g = to_f(gate[i]);
      orow[i] = to_bf(round_bf(g / (1.0f + std::exp(-g))) * to_f(up[i]));
    }
  }
}

// Rotary embedding of the q and k heads of a fused qkv row, in place (rotate-half convention,
// cos/sin rounded to bf16 and each product rounded, as the PyTorch path does), then the token's
// rotated k and its v written to the layer's paged KV cache (N, kvh, bs, d) at its slot.
void rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                   torch::Tensor slot_mapping, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   int64_t kv_heads) {
  const int64_t T = qkv.size(0), d = k_cache.size(3), bs = k_cache.size(2);
  const int64_t r = cos.size(1), half = r / 2;  // rotary dims: the first r of each head (partial rotary)
  const int64_t row_stride = qkv.stride(0);
  bf16_t* qp = bf_ptr(qkv);
  bf16_t* kc = bf_ptr(k_cache);
  bf16_t* vc = bf_ptr(v_cache);
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    bf16_t* row = qp + t * row_stride;
    const float* c = cp + pos[t] * r;
    const float* s = sp + pos[t] * r;
    for (int64_t head = 0; head < heads + kv_heads; ++head) {
      bf16_t* x = row + head * d;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = to_f(x[i]), x2 = to_f(x[i + half]);
        const float lo = round_bf(x1 * round_bf(c[i])) + round_bf(-x2 * round_bf(s[i]));
        const float hi = round_bf(x2 * round_bf(c[i + half])) + round_bf(x1 * round_bf(s[i + half]));
        x[i] = to_bf(lo);
        x[i + half] = to_bf(hi);
      }
    }
    for (int64_t kh = 0; kh < kv_heads; ++kh) {
      const int64_t at = ((slot[t] / bs * kv_heads + kh) * bs + slot[t] % bs) * d;
      std::memcpy(kc + at, row + (heads + kh) * d, d * sizeof(bf16_t));
      std::memcpy(vc + at, row + (heads + kv_heads + kh) * d, d * sizeof(bf16_t));
    }
  }
}

// One query token per sequence over its paged cached keys (see the entry point in
// cpu_kernels.cpp). Scores, softmax and the weighted sum in fp32.
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor lengths, torch::Tensor out, double scale,
                      int64_t window, double softcap) {
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2);
  const int64_t kvh = k_cache.size(1), bs = k_cache.size(2), group = H / kvh, M = block_tables.size(1);
  const int64_t q_stride = q.stride(0), q_head = q.stride(1), o_stride = out.stride(0), o_head = out.stride(1);
  const bf16_t* qp = bf_ptr(q);
  const bf16_t* kc = bf_ptr(k_cache);
  const bf16_t* vc = bf_ptr(v_cache);
  bf16_t* op = bf_ptr(out);
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = lengths.data_ptr<int64_t>();
  const float fscale = float(scale);
  const int64_t block_stride = kvh * bs * d;  // from one block to the next
#pragma omp parallel
  {
    std::vector<float> query(group * d), scores, acc(group * d);
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < B * kvh; ++unit) {
      const int64_t b = unit / kvh, kh = unit % kvh, L = lens[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, L - window) : 0;  // a sliding window's start
      const float cap = float(softcap);
      const int64_t* blocks = tables + b * M;
      const bf16_t* keys = kc + kh * bs * d;  // this KV head's rows in block 0; + block * stride
      const bf16_t* values = vc + kh * bs * d;
      scores.resize(group * L);
      for (int64_t g = 0; g < group; ++g) {
        const bf16_t* qh = qp + b * q_stride + (kh * group + g) * q_head;
        for (int64_t i = 0; i < d; ++i) query[g * d + i] = to_f(qh[i]) * fscale;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
#if defined(__AVX512BF16__)
      if (d == 64) {
        attend_unit<4>(query.data(), keys, values, blocks, block_stride, bs, scores.data(), acc.data(), group, first, L, cap);
      } else if (d == 128) {
        attend_unit<8>(query.data(), keys, values, blocks, block_stride, bs, scores.data(), acc.data(), group, first, L, cap);
      } else
#endif
      {
        for (int64_t l = first; l < L; ++l) {
          const bf16_t* key_row = keys + blocks[l / bs] * block_stride + (l % bs) * d;
          for (int64_t g = 0; g < group; ++g) scores[g * L + l] = dot_f32_bf16(query.data() + g * d, key_row, d);
        }
        for (int64_t g = 0; g < group; ++g) {
          cap_and_softmax(scores.data() + g * L + first, L - first, cap);
          for (int64_t l = first; l < L; ++l)
            axpy_bf16(acc.data() + g * d, scores[g * L + l], values + blocks[l / bs] * block_stride + (l % bs) * d, d);
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        bf16_t* oh = op + b * o_stride + (kh * group + g) * o_head;
        for (int64_t i = 0; i < d; ++i) oh[i] = to_bf(acc[g * d + i]);
      }
    }
  }
}

}  // namespace bf16
