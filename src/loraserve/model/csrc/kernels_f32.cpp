// The fp32 kernels (dtype=auto on CPUs without native bf16), written once against simd::Vec:
// 8 lanes in the AVX2+FMA build, 16 in the AVX-512 ones, 1 in the scalar one. Each replaces a
// chain of small PyTorch ops; inputs are checked by the entry points in cpu_kernels.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "simd.h"

using simd::Vec;

namespace {

constexpr int kTile = 4;  // consecutive tokens of one slot that share each read of its rows
constexpr int kChunks = Vec::W == 16 ? 4 : 2;  // B columns per pass: kChunks vectors per token

// dots[g] = x[g] . a for N vectors x[g], reading a once.
template <int N>
inline void dots(const float* const* x, const float* a, int64_t len, float* out) {
  Vec::reg acc[N];
  for (int g = 0; g < N; ++g) acc[g] = Vec::zero();
  int64_t i = 0;
  for (; i + Vec::W <= len; i += Vec::W) {
    const Vec::reg row = Vec::load(a + i);
    for (int g = 0; g < N; ++g) acc[g] = Vec::fmadd(Vec::load(x[g] + i), row, acc[g]);
  }
  for (int g = 0; g < N; ++g) {
    float total = Vec::sum(acc[g]);
    for (int64_t j = i; j < len; ++j) total += x[g][j] * a[j];
    out[g] = total;
  }
}

// For each of N tokens g: out[g][col + 0:len] += sum over i < ranks of h[i * h_stride + g] *
// b[i * b_stride + 0:len], the sums kept in registers kChunks vectors at a time.
template <int N>
inline void expand(float* const* out, int64_t col, const float* h, int64_t h_stride, const float* b,
                   int64_t b_stride, int64_t ranks, int64_t len) {
  constexpr int64_t step = kChunks * Vec::W;
  int64_t o = 0;
  for (; o + step <= len; o += step) {
    Vec::reg acc[N][kChunks];
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < kChunks; ++c) acc[g][c] = Vec::zero();
    for (int64_t i = 0; i < ranks; ++i) {
      const float* row = b + i * b_stride + o;
      Vec::reg chunk[kChunks];
      for (int c = 0; c < kChunks; ++c) chunk[c] = Vec::load(row + c * Vec::W);
      for (int g = 0; g < N; ++g) {
        const Vec::reg hv = Vec::set1(h[i * h_stride + g]);
        for (int c = 0; c < kChunks; ++c) acc[g][c] = Vec::fmadd(hv, chunk[c], acc[g][c]);
      }
    }
    for (int g = 0; g < N; ++g)
      for (int c = 0; c < kChunks; ++c) {
        float* dst = out[g] + col + o + c * Vec::W;
        Vec::store(dst, Vec::add(Vec::load(dst), acc[g][c]));
      }
  }
  for (; o < len; ++o)
    for (int g = 0; g < N; ++g) {
      float sum = 0.0f;
      for (int64_t i = 0; i < ranks; ++i) sum += h[i * h_stride + g] * b[i * b_stride + o];
      out[g][col + o] += sum;
    }
}

// One tile of N <= kTile consecutive tokens on one adapter slot (see f32::bgmv).
template <int N>
void bgmv_tile(const float* const* x, float* const* out, const float* a, const float* b, int64_t in,
               int64_t O, int64_t k, int64_t ranks, int64_t modules, const int64_t* cs, const int64_t* cl,
               float* h) {
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

// x[0:n] = softmax(x[0:n]) in place.
void softmax_inplace(float* x, int64_t n) {
  float peak = -INFINITY;
  for (int64_t l = 0; l < n; ++l) peak = std::max(peak, x[l]);
  const Vec::reg shift = Vec::set1(peak);
  Vec::reg sum = Vec::zero();
  int64_t l = 0;
  for (; l + Vec::W <= n; l += Vec::W) {
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
  for (l = 0; l < n; ++l) x[l] *= norm;
}


// acc[0:C*W] += sum over l < L of p[l] * values[l * d + 0:C*W], in C registers.
template <int C>
inline void weighted_sum(const float* p, const float* values, int64_t d, int64_t L, float* acc) {
  Vec::reg sum[C];
  for (int c = 0; c < C; ++c) sum[c] = Vec::load(acc + c * Vec::W);
  for (int64_t l = 0; l < L; ++l) {
    const Vec::reg weight = Vec::set1(p[l]);
    for (int c = 0; c < C; ++c) sum[c] = Vec::fmadd(weight, Vec::load(values + l * d + c * Vec::W), sum[c]);
  }
  for (int c = 0; c < C; ++c) Vec::store(acc + c * Vec::W, sum[c]);
}

// One (sequence, KV head) of decode attention over a paged cache: `group` query heads (already
// scaled) share it; position l's key is row l % bs of block blocks[l / bs], whose rows for this
// head start at cache + (blocks[j] * kvh + kh) * bs * d. Keys [first, L) are attended (first > 0:
// a sliding window); softcap > 0 caps each score at softcap * tanh(score / softcap) (Gemma 2).
void attend_unit(const float* query, const float* k_cache, const float* v_cache, const int64_t* blocks,
                 int64_t head_offset, int64_t bs, float* scores, float* acc, int64_t group, int64_t first,
                 int64_t L, int64_t d, float softcap) {
  for (int64_t start = first; start < L;) {
    const int64_t offset = start % bs, n = std::min(bs - offset, L - start);
    const float* keys = k_cache + blocks[start / bs] * head_offset + offset * d;
    for (int64_t l = 0; l < n; ++l)
      for (int64_t g = 0; g < group; ++g) scores[g * L + start + l] = simd::dot(query + g * d, keys + l * d, d);
    start += n;
  }
  for (int64_t g = 0; g < group; ++g) {
    float* row = scores + g * L + first;
    if (softcap > 0.0f)
      for (int64_t l = 0; l < L - first; ++l) row[l] = softcap * std::tanh(row[l] / softcap);
    softmax_inplace(row, L - first);
  }
  std::fill(acc, acc + group * d, 0.0f);
  constexpr int64_t wide = 8 * Vec::W;  // 8 accumulators stay in registers
  for (int64_t start = first; start < L; start += std::min(bs - start % bs, L - start)) {
    const float* values = v_cache + blocks[start / bs] * head_offset + (start % bs) * d;
    const int64_t n = std::min(bs - start % bs, L - start);
    for (int64_t g = 0; g < group; ++g) {
      const float* p = scores + g * L + start;
      float* out = acc + g * d;
      int64_t c0 = 0;
      for (; c0 + wide <= d; c0 += wide) weighted_sum<8>(p, values + c0, d, n, out + c0);
      for (; c0 + Vec::W <= d; c0 += Vec::W) weighted_sum<1>(p, values + c0, d, n, out + c0);
      for (; c0 < d; ++c0)
        for (int64_t l = 0; l < n; ++l) out[c0] += p[l] * values[l * d + c0];
    }
  }
}

}  // namespace

namespace f32 {

int64_t vector_width() { return Vec::W; }

// See the entry point in cpu_kernels.cpp for the layout of A, B and slot_info.
void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out,
          int64_t k, int64_t rank, torch::Tensor col_start, torch::Tensor col_len, torch::Tensor slot_info) {
  const int64_t T = x.size(0), in = x.size(1), KA = a.size(1), R = b.size(1), O = b.size(2);
  const float* xp = x.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* op = out.data_ptr<float>();
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
      const float* xs[kTile];
      float* outs[kTile];
      for (int64_t g = 0; g < end - first; ++g) {
        xs[g] = xp + (first + g) * in;
        outs[g] = op + (first + g) * out_stride;
      }
      const float* as = ap + s * KA * in;
      const float* bs = bp + s * R * O;
      switch (end - first) {
        case 1: bgmv_tile<1>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 2: bgmv_tile<2>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        case 3: bgmv_tile<3>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data()); break;
        default: bgmv_tile<kTile>(xs, outs, as, bs, in, O, k, ranks, modules, cs, cl, h.data());
      }
    }
  }
}

// h += delta (in place), then out = w * (h * rsqrt(mean(h^2) + eps)).
void add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor w, double eps,
                  torch::Tensor out) {
  const int64_t T = h.size(0), D = h.size(1), h_stride = h.stride(0), o_stride = out.stride(0);
  float* hp = h.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* dp = delta.has_value() ? delta->data_ptr<float>() : nullptr;
  const int64_t d_stride = delta.has_value() ? delta->stride(0) : 0;
#pragma omp parallel for schedule(static) if (T > 8)
  for (int64_t t = 0; t < T; ++t) {
    float* hr = hp + t * h_stride;
    Vec::reg squares = Vec::zero();
    int64_t i = 0;
    for (; i + Vec::W <= D; i += Vec::W) {
      Vec::reg v = Vec::load(hr + i);
      if (dp != nullptr) {
        v = Vec::add(v, Vec::load(dp + t * d_stride + i));
        Vec::store(hr + i, v);
      }
      squares = Vec::fmadd(v, v, squares);
    }
    float total = Vec::sum(squares);
    for (; i < D; ++i) {
      if (dp != nullptr) hr[i] += dp[t * d_stride + i];
      total += hr[i] * hr[i];
    }
    const float inv = 1.0f / std::sqrt(total / float(D) + float(eps));
    const Vec::reg scale = Vec::set1(inv);
    float* orow = op + t * o_stride;
    for (i = 0; i + Vec::W <= D; i += Vec::W)
      Vec::store(orow + i, Vec::mul(Vec::load(wp + i), Vec::mul(Vec::load(hr + i), scale)));
    for (; i < D; ++i) orow[i] = wp[i] * (hr[i] * inv);
  }
}

// out (T, I) = silu(gate) * up for gate_up (T, 2I) = [gate | up].
void silu_mul(torch::Tensor gate_up, torch::Tensor out) {
  const int64_t T = gate_up.size(0), I = out.size(1), in_stride = gate_up.stride(0), o_stride = out.stride(0);
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* gate = gp + t * in_stride;
    const float* up = gate + I;
    float* orow = op + t * o_stride;
    const Vec::reg one = Vec::set1(1.0f);
    int64_t i = 0;
    for (; i + Vec::W <= I; i += Vec::W) {
      const Vec::reg g = Vec::load(gate + i);
      const Vec::reg silu = Vec::div(g, Vec::add(one, simd::exp(Vec::sub(Vec::zero(), g))));
      Vec::store(orow + i, Vec::mul(silu, Vec::load(up + i)));
    }
    for (; i < I; ++i) orow[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
}

// Rotary embedding of q and k in place (rotate-half), then k and v into the cache at (slot, pos).
void rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                   torch::Tensor slot_mapping, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   int64_t kv_heads) {
  const int64_t T = qkv.size(0), d = k_cache.size(3), bs = k_cache.size(2);
  const int64_t r = cos.size(1), half = r / 2;  // rotary dims: the first r of each head (partial rotary)
  const int64_t row_stride = qkv.stride(0);
  float* qp = qkv.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) if (T > 8)
  for (int64_t t = 0; t < T; ++t) {
    float* row = qp + t * row_stride;
    const float* c = cp + pos[t] * r;
    const float* s = sp + pos[t] * r;
    for (int64_t head = 0; head < heads + kv_heads; ++head) {
      float* x = row + head * d;
      int64_t i = 0;
      for (; i + Vec::W <= half; i += Vec::W) {  // the same products and sums as the PyTorch path
        const Vec::reg x1 = Vec::load(x + i), x2 = Vec::load(x + i + half);
        Vec::store(x + i, Vec::sub(Vec::mul(x1, Vec::load(c + i)), Vec::mul(x2, Vec::load(s + i))));
        Vec::store(x + i + half,
                   Vec::add(Vec::mul(x2, Vec::load(c + i + half)), Vec::mul(x1, Vec::load(s + i + half))));
      }
      for (; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c[i] - x2 * s[i];
        x[i + half] = x2 * c[i + half] + x1 * s[i + half];
      }
    }
    for (int64_t kh = 0; kh < kv_heads; ++kh) {
      const int64_t at = ((slot[t] / bs * kv_heads + kh) * bs + slot[t] % bs) * d;
      std::memcpy(kc + at, row + (heads + kh) * d, d * sizeof(float));
      std::memcpy(vc + at, row + (heads + kv_heads + kh) * d, d * sizeof(float));
    }
  }
}

// One query token per sequence over its paged cached keys; GQA by KV head, all in fp32.
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor lengths, torch::Tensor out, double scale,
                      int64_t window, double softcap) {
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2);
  const int64_t kvh = k_cache.size(1), bs = k_cache.size(2), group = H / kvh, M = block_tables.size(1);
  const int64_t q_stride = q.stride(0), q_head = q.stride(1), o_stride = out.stride(0), o_head = out.stride(1);
  const float* qp = q.data_ptr<float>();
  const float* kc = k_cache.data_ptr<float>();
  const float* vc = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
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
      scores.resize(group * L);
      for (int64_t g = 0; g < group; ++g) {
        const float* qh = qp + b * q_stride + (kh * group + g) * q_head;
        for (int64_t i = 0; i < d; ++i) query[g * d + i] = qh[i] * fscale;
      }
      const int64_t head = kh * bs * d;
      const int64_t first = window > 0 ? std::max<int64_t>(0, L - window) : 0;
      attend_unit(query.data(), kc + head, vc + head, tables + b * M, block_stride, bs, scores.data(),
                  acc.data(), group, first, L, d, float(softcap));
      for (int64_t g = 0; g < group; ++g)
        std::memcpy(op + b * o_stride + (kh * group + g) * o_head, acc.data() + g * d, d * sizeof(float));
    }
  }
}

}  // namespace f32
