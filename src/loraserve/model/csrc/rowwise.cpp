// The kernels that work a token's row at a time: residual add + RMSNorm, SwiGLU's activation,
// RoPE + KV-cache write. All compute in fp32; for bf16, Elem::round repeats each rounding the
// PyTorch path (Hugging Face's modelling code in bf16) makes, so results match it, RoPE bit for bit.
#include <cmath>
#include <cstring>

#include "kernels.h"

using simd::bf16_t;
using simd::Elem;
using simd::Vec;

namespace kernels {

// out[0:D] = w * T(x * rsqrt(total / D + eps)), total = sum(x^2): the second pass of every RMSNorm
// here (out may be x).
template <class T>
void scale_row(const T* x, const T* w, T* out, int64_t D, float total, float eps) {
  using E = Elem<T>;
  const float inv = 1.0f / std::sqrt(total / float(D) + eps);
  const Vec::reg scale = Vec::set1(inv);
  int64_t i = 0;
  for (; i + Vec::W <= D; i += Vec::W)
    E::store(out + i, Vec::mul(E::load(w + i), E::round(Vec::mul(E::load(x + i), scale))));
  for (; i < D; ++i) out[i] = E::from_f(E::to_f(w[i]) * E::round_f(E::to_f(x[i]) * inv));
}

// h += delta (in place, so rounded to T), then out = w * T(h * rsqrt(mean(h^2) + eps)).
template <class T>
void add_rms_norm(at::Tensor h, c10::optional<at::Tensor> delta, at::Tensor w, double eps, at::Tensor out) {
  using E = Elem<T>;
  const int64_t tokens = h.size(0), D = h.size(1), h_stride = h.stride(0), o_stride = out.stride(0);
  T* hp = h.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T* dp = delta.has_value() ? delta->data_ptr<T>() : nullptr;
  const int64_t d_stride = delta.has_value() ? delta->stride(0) : 0;
#pragma omp parallel for schedule(static) if (tokens > 8)
  for (int64_t t = 0; t < tokens; ++t) {
    T* hr = hp + t * h_stride;
    const T* dr = dp + t * d_stride;
    Vec::reg squares = Vec::zero();
    int64_t i = 0;
    for (; i + Vec::W <= D; i += Vec::W) {
      Vec::reg v = E::load(hr + i);
      if (dp != nullptr) {
        v = E::round(Vec::add(v, E::load(dr + i)));
        E::store(hr + i, v);
      }
      squares = Vec::fmadd(v, v, squares);
    }
    float total = Vec::sum(squares);
    for (; i < D; ++i) {
      if (dp != nullptr) hr[i] = E::from_f(E::to_f(hr[i]) + E::to_f(dr[i]));
      total += E::to_f(hr[i]) * E::to_f(hr[i]);
    }
    scale_row(hr, wp, op + t * o_stride, D, total, float(eps));
  }
}

// In place over each token's first `heads` heads of d (row stride x.stride(0)): every head
// x = w * T(x * rsqrt(mean(x^2) + eps)), w (d,) shared by the heads (Qwen3's and Gemma 3's QK-norm),
// add_rms_norm's arithmetic per head.
template <class T>
void head_rms_norm(T* row, const T* w, int64_t heads, int64_t d, float eps) {
  using E = Elem<T>;
  for (int64_t head = 0; head < heads; ++head) {
    T* x = row + head * d;
    Vec::reg squares = Vec::zero();
    int64_t i = 0;
    for (; i + Vec::W <= d; i += Vec::W) {
      const Vec::reg v = E::load(x + i);
      squares = Vec::fmadd(v, v, squares);
    }
    float total = Vec::sum(squares);
    for (; i < d; ++i) total += E::to_f(x[i]) * E::to_f(x[i]);
    scale_row(x, w, x, d, total, eps);
  }
}

// QK-norm of a fused qkv (T, (H + 2 kvh) d) in place: the H q heads with q_w, the kvh k heads
// with k_w (both (d,)), before RoPE.
template <class T>
void qk_norm(at::Tensor qkv, at::Tensor q_w, at::Tensor k_w, int64_t heads, int64_t kv_heads, double eps) {
  const int64_t tokens = qkv.size(0), d = q_w.size(0), row_stride = qkv.stride(0);
  T* qp = qkv.data_ptr<T>();
  const T* qw = q_w.data_ptr<T>();
  const T* kw = k_w.data_ptr<T>();
#pragma omp parallel for schedule(static) if (tokens > 8)
  for (int64_t t = 0; t < tokens; ++t) {
    T* row = qp + t * row_stride;
    head_rms_norm(row, qw, heads, d, float(eps));
    head_rms_norm(row + heads * d, kw, kv_heads, d, float(eps));
  }
}

// out (T, I) = T(act(gate)) * up for gate_up (T, 2I) = [gate | up], act(g) = g * sigmoid(z):
// z = g for SiLU (SwiGLU); z = 2 sqrt(2/pi) (g + 0.044715 g^3) for GELU's tanh form (GeGLU,
// Gemma), since 0.5 (1 + tanh(z / 2)) = sigmoid(z).
template <class T, bool Gelu>
void gated_mul(at::Tensor gate_up, at::Tensor out) {
  using E = Elem<T>;
  constexpr float kBeta2 = 1.5957691216057308f;  // 2 sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const int64_t tokens = gate_up.size(0), I = out.size(1);
  const int64_t in_stride = gate_up.stride(0), o_stride = out.stride(0);
  const T* gp = gate_up.data_ptr<T>();
  T* op = out.data_ptr<T>();
#pragma omp parallel for schedule(static) if (tokens > 1)
  for (int64_t t = 0; t < tokens; ++t) {
    const T* gate = gp + t * in_stride;
    const T* up = gate + I;
    T* orow = op + t * o_stride;
    const Vec::reg one = Vec::set1(1.0f);
    int64_t i = 0;
    for (; i + Vec::W <= I; i += Vec::W) {
      const Vec::reg g = E::load(gate + i);
      Vec::reg z = g;
      if constexpr (Gelu) {
        const Vec::reg cube = Vec::mul(g, Vec::mul(g, g));
        z = Vec::mul(Vec::set1(kBeta2), Vec::fmadd(Vec::set1(kKappa), cube, g));
      }
      const Vec::reg act = Vec::div(g, Vec::add(one, simd::exp(Vec::sub(Vec::zero(), z))));
      E::store(orow + i, Vec::mul(E::round(act), E::load(up + i)));
    }
    for (; i < I; ++i) {
      const float g = E::to_f(gate[i]);
      const float z = Gelu ? kBeta2 * (kKappa * (g * g * g) + g) : g;
      orow[i] = E::from_f(E::round_f(g / (1.0f + std::exp(-z))) * E::to_f(up[i]));
    }
  }
}

template <class T>
void silu_mul(at::Tensor gate_up, at::Tensor out) {
  gated_mul<T, false>(gate_up, out);
}

template <class T>
void gelu_tanh_mul(at::Tensor gate_up, at::Tensor out) {
  gated_mul<T, true>(gate_up, out);
}

// Rotary embedding of q and k in place (rotate-half), then k and v into the cache at their slot.
// The PyTorch path's order: cos/sin converted to T, each product rounded, then the sum.
template <class T>
void rope_write_kv(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor positions,
                   at::Tensor slot_mapping, at::Tensor k_cache, at::Tensor v_cache, int64_t heads,
                   int64_t kv_heads) {
  using E = Elem<T>;
  const int64_t tokens = qkv.size(0), d = k_cache.size(3), bs = k_cache.size(2);
  const int64_t r = cos.size(1), half = r / 2;  // rotary dims: the first r of each head (partial rotary)
  const int64_t row_stride = qkv.stride(0);
  T* qp = qkv.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) if (tokens > 8)
  for (int64_t t = 0; t < tokens; ++t) {
    T* row = qp + t * row_stride;
    const float* c = cp + pos[t] * r;
    const float* s = sp + pos[t] * r;
    for (int64_t head = 0; head < heads + kv_heads; ++head) {
      T* x = row + head * d;
      int64_t i = 0;
      for (; i + Vec::W <= half; i += Vec::W) {
        const Vec::reg x1 = E::load(x + i), x2 = E::load(x + i + half);
        const Vec::reg c1 = E::round(Vec::load(c + i)), s1 = E::round(Vec::load(s + i));
        const Vec::reg c2 = E::round(Vec::load(c + i + half)), s2 = E::round(Vec::load(s + i + half));
        E::store(x + i, Vec::sub(E::round(Vec::mul(x1, c1)), E::round(Vec::mul(x2, s1))));
        E::store(x + i + half, Vec::add(E::round(Vec::mul(x2, c2)), E::round(Vec::mul(x1, s2))));
      }
      for (; i < half; ++i) {
        const float x1 = E::to_f(x[i]), x2 = E::to_f(x[i + half]);
        const float c1 = E::round_f(c[i]), s1 = E::round_f(s[i]);
        const float c2 = E::round_f(c[i + half]), s2 = E::round_f(s[i + half]);
        x[i] = E::from_f(E::round_f(x1 * c1) - E::round_f(x2 * s1));
        x[i + half] = E::from_f(E::round_f(x2 * c2) + E::round_f(x1 * s2));
      }
    }
    for (int64_t kh = 0; kh < kv_heads; ++kh) {
      const int64_t at = ((slot[t] / bs * kv_heads + kh) * bs + slot[t] % bs) * d;
      std::memcpy(kc + at, row + (heads + kh) * d, d * sizeof(T));
      std::memcpy(vc + at, row + (heads + kv_heads + kh) * d, d * sizeof(T));
    }
  }
}

LORASERVE_INSTANTIATE(add_rms_norm, (at::Tensor, c10::optional<at::Tensor>, at::Tensor, double, at::Tensor))
LORASERVE_INSTANTIATE(silu_mul, (at::Tensor, at::Tensor))
LORASERVE_INSTANTIATE(gelu_tanh_mul, (at::Tensor, at::Tensor))
LORASERVE_INSTANTIATE(qk_norm, (at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t, double))
LORASERVE_INSTANTIATE(rope_write_kv, (at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                      at::Tensor, int64_t, int64_t))

}  // namespace kernels
