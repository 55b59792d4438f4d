// The kernels, each written once as a template over its element type T and instantiated for float
// and bf16 (bgmv.cpp, rowwise.cpp, attention.cpp, gemm.cpp, gemv.cpp, w8a8.cpp, lora_image.cpp). cpu_kernels.cpp checks every input, then calls
// the instantiation of the tensors' dtype. Shapes are documented at the entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "simd.h"

namespace kernels {

using simd::bf16_t;

// Memory a kernel brings towards the cache while it computes, for the kernel its caller runs next.
struct Span {
  const char* start;
  int64_t bytes;
};
using Spans = std::vector<Span>;

template <class T>
void bgmv(at::Tensor x, at::Tensor slots, at::Tensor a, at::Tensor b, at::Tensor out, int64_t k, int64_t rank,
          at::Tensor col_start, at::Tensor col_len, at::Tensor slot_info);
template <class T>
void add_rms_norm(at::Tensor h, c10::optional<at::Tensor> delta, at::Tensor w, double eps, at::Tensor out);
template <class T>
void silu_mul(at::Tensor gate_up, at::Tensor out);
template <class T>
void gelu_tanh_mul(at::Tensor gate_up, at::Tensor out);
template <class T>
void qk_norm(at::Tensor qkv, at::Tensor q_w, at::Tensor k_w, int64_t heads, int64_t kv_heads, double eps);
template <class T>
void rope_write_kv(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor positions,
                   at::Tensor slot_mapping, at::Tensor k_cache, at::Tensor v_cache, int64_t heads,
                   int64_t kv_heads);
template <class T>
void gemv(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out);
template <class T>
void packed_gemm(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out,
                 const Spans& warm = {});
template <class T>
bool packed_gemm_tiled();
template <class T>
void gemv_int8(at::Tensor x, at::Tensor q, at::Tensor scales, c10::optional<at::Tensor> bias, at::Tensor out);
template <class T>
void gemv_q8_0(at::Tensor x, at::Tensor q, at::Tensor d, c10::optional<at::Tensor> bias, at::Tensor out);
template <class T>
void w8a8_gemm(at::Tensor x, at::Tensor w, at::Tensor wsum, at::Tensor sw, at::Tensor out);
template <class T>
void w8a8_quantize(at::Tensor x, at::Tensor xu, at::Tensor sx);
template <class T>
void w8a8_rescale(at::Tensor acc, at::Tensor sx, at::Tensor sw, at::Tensor out);
template <class T>
void lora_image(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                const std::vector<double>& scales, const std::vector<int64_t>& layers, at::Tensor image_a,
                at::Tensor image_b, int64_t column, int64_t stride, int64_t row_start);
template <class T>
void decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache, at::Tensor block_tables,
                      at::Tensor lengths, at::Tensor out, double scale, int64_t window, double softcap,
                      const c10::optional<at::Tensor>& table_of);

// The register-tile instantiations a GEMM picks from at run time (gemm.cpp, w8a8.cpp):
// table[R - 1][C - 1] = make(R, C) for R in [1, Rows], C in [1, Cols], R and C passed as
// std::integral_constant so that make can name tile<R, C, ...>.
template <int R, class Make, int... C>
constexpr auto tile_row(Make make, std::integer_sequence<int, C...>) {
  return std::array{make(std::integral_constant<int, R>{}, std::integral_constant<int, C + 1>{})...};
}

template <int Cols, class Make, int... R>
constexpr auto tile_rows(Make make, std::integer_sequence<int, R...>) {
  return std::array{tile_row<R + 1>(make, std::make_integer_sequence<int, Cols>{})...};
}

template <int Rows, int Cols, class Make>
constexpr auto tile_table(Make make) {
  return tile_rows<Cols>(make, std::make_integer_sequence<int, Rows>{});
}

// Explicit instantiations of kernel `name` (its parameter list in parentheses) for both element types.
#define LORASERVE_INSTANTIATE(name, params) \
  template void name<float> params;         \
  template void name<bf16_t> params;

}  // namespace kernels
