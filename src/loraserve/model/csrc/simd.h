// One fp32 vector type per kernel build, chosen by the compiler flags the build was given
// (hardware.py names them): 16 lanes with AVX-512, 8 with AVX2+FMA, 1 without. The fp32 kernels
// are written once against this interface; the build decides the width.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace simd {

#if defined(__AVX512F__)
struct Vec {
  using reg = __m512;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
  static reg round(reg v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale2(reg p, reg n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  using reg = __m256;
  static constexpr int W = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static float sum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg round(reg v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale2(reg p, reg n) {  // p * 2^n for integral n in [-126, 127]: build 2^n's exponent
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
};
#else
struct Vec {
  using reg = float;
  static constexpr int W = 1;
  static reg load(const float* p) { return *p; }
  static void store(float* p, reg v) { *p = v; }
  static reg set1(float x) { return x; }
  static reg zero() { return 0.0f; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg fnmadd(reg a, reg b, reg c) { return c - a * b; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg div(reg a, reg b) { return a / b; }
  static reg max(reg a, reg b) { return a > b ? a : b; }
  static reg min(reg a, reg b) { return a < b ? a : b; }
  static float sum(reg v) { return v; }
  static reg round(reg v) { return std::nearbyint(v); }
  static reg scale2(reg p, reg n) { return std::ldexp(p, int(n)); }
};
#endif

// exp(x) to about 1 ulp: x = n ln2 + r, e^r by Cephes' polynomial, scaled by 2^n. Inputs are
// clamped to [-87, 88] (e^-87 ~ 1.6e-38: softmax and silu lose nothing there).
inline Vec::reg exp(Vec::reg x) {
  x = Vec::max(Vec::min(x, Vec::set1(88.0f)), Vec::set1(-87.0f));
  const Vec::reg n = Vec::round(Vec::mul(x, Vec::set1(1.44269504088896341f)));
  Vec::reg r = Vec::fnmadd(n, Vec::set1(0.693359375f), x);
  r = Vec::fnmadd(n, Vec::set1(-2.12194440e-4f), r);
  Vec::reg p = Vec::set1(1.9875691500e-4f);
  p = Vec::fmadd(p, r, Vec::set1(1.3981999507e-3f));
  p = Vec::fmadd(p, r, Vec::set1(8.3334519073e-3f));
  p = Vec::fmadd(p, r, Vec::set1(4.1665795894e-2f));
  p = Vec::fmadd(p, r, Vec::set1(1.6666665459e-1f));
  p = Vec::fmadd(p, r, Vec::set1(5.0000001201e-1f));
  p = Vec::fmadd(p, Vec::mul(r, r), Vec::add(r, Vec::set1(1.0f)));
  return Vec::scale2(p, n);
}

// Dot product of two fp32 vectors, two accumulators to hide the FMA latency.
inline float dot(const float* x, const float* y, int64_t n) {
  Vec::reg a0 = Vec::zero(), a1 = Vec::zero();
  int64_t i = 0;
  for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
    a0 = Vec::fmadd(Vec::load(x + i), Vec::load(y + i), a0);
    a1 = Vec::fmadd(Vec::load(x + i + Vec::W), Vec::load(y + i + Vec::W), a1);
  }
  for (; i + Vec::W <= n; i += Vec::W) a0 = Vec::fmadd(Vec::load(x + i), Vec::load(y + i), a0);
  float total = Vec::sum(Vec::add(a0, a1));
  for (; i < n; ++i) total += x[i] * y[i];
  return total;
}

}  // namespace simd
