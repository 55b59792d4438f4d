// One fp32 vector type per kernel build, chosen by the compiler flags the build was given
// (hardware.py names them): 16 lanes with AVX-512, 8 with AVX2+FMA, 1 without. Every kernel
// computes in fp32 on Vec; Elem<T> reads and writes its element type T (float or bf16) as fp32
// lanes, so a kernel is written once, templated over T.
#pragma once

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace simd {

using bf16_t = c10::BFloat16;

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
  static reg rint(reg v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
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
  static reg rint(reg v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
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
  static reg rint(reg v) { return std::nearbyint(v); }
  static reg scale2(reg p, reg n) { return std::ldexp(p, int(n)); }
};
#endif

// exp(x) to about 1 ulp: x = n ln2 + r, e^r by Cephes' polynomial, scaled by 2^n. One clamp for
// every build: [-87, 88] keeps n in [-126, 127], the range AVX2's scale2 can build as an exponent
// (e^88 ~ 1.7e38 < FLT_MAX; e^-87 ~ 1.6e-38: softmax and silu lose nothing below it).
inline Vec::reg exp(Vec::reg x) {
  x = Vec::max(Vec::min(x, Vec::set1(88.0f)), Vec::set1(-87.0f));
  const Vec::reg n = Vec::rint(Vec::mul(x, Vec::set1(1.44269504088896341f)));
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

// How a kernel reads and writes element type T: load widens W elements to fp32 lanes, store
// rounds them back; to_f / from_f do the same for one element (the scalar tails). round(v) is
// from_f then to_f on every lane: identity for fp32, and for bf16 the intermediate roundings the
// PyTorch path makes (each bf16 op rounds its result), which the kernels repeat so they match it.
template <class T>
struct Elem;

template <>
struct Elem<float> {
  static Vec::reg load(const float* p) { return Vec::load(p); }
  static void store(float* p, Vec::reg v) { Vec::store(p, v); }
  static Vec::reg round(Vec::reg v) { return v; }
  static float to_f(float v) { return v; }
  static float from_f(float v) { return v; }
  static float round_f(float v) { return v; }
};

// bf16 is the high half of an fp32: widening is a 16-bit shift; narrowing rounds to nearest even
// as c10::BFloat16 does (NaN stays NaN), by VCVTNEPS2BF16 where the CPU has it (which also flushes
// fp32 denormals, ~1e-38, to zero), by integer arithmetic on the fp32 bits elsewhere.
template <>
struct Elem<bf16_t> {
#if defined(__AVX512F__)
  static Vec::reg load(const bf16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
#if defined(__AVX512BF16__)
  static void store(bf16_t* p, Vec::reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
  }
  static Vec::reg round(Vec::reg v) { return _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)); }
#else
  static __m512i rounded_bits(Vec::reg v) {  // fp32 bits rounded to the high half, low half zero
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))),
                                       _mm512_set1_epi32(int(0xffff0000u)));
    return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc00000));
  }
  static void store(bf16_t* p, Vec::reg v) {
    const __m256i high = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded_bits(v), 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), high);
  }
  static Vec::reg round(Vec::reg v) { return _mm512_castsi512_ps(rounded_bits(v)); }
#endif
#elif defined(__AVX2__) && defined(__FMA__)
  static Vec::reg load(const bf16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static __m256i rounded_bits(Vec::reg v) {  // as the AVX-512 one
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))),
                                       _mm256_set1_epi32(int(0xffff0000u)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc00000), nan);
  }
  static void store(bf16_t* p, Vec::reg v) {
    const __m256i high = _mm256_srli_epi32(rounded_bits(v), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  static Vec::reg round(Vec::reg v) { return _mm256_castsi256_ps(rounded_bits(v)); }
#else
  static Vec::reg load(const bf16_t* p) { return float(*p); }
  static void store(bf16_t* p, Vec::reg v) { *p = bf16_t(v); }
  static Vec::reg round(Vec::reg v) { return float(bf16_t(v)); }
#endif
  static float to_f(bf16_t v) { return float(v); }
  static bf16_t from_f(float v) { return bf16_t(v); }  // c10's round to nearest even
  static float round_f(float v) { return float(bf16_t(v)); }
};

}  // namespace simd
