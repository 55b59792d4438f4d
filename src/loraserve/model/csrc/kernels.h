// The kernels, each written once as a template over its element type T and instantiated for float
// and bf16 (bgmv.cpp, rowwise.cpp, attention.cpp, gemm.cpp, gemv.cpp, w8a8.cpp, lora_image.cpp). cpu_kernels.cpp checks every input, then calls
// the instantiation of the tensors' dtype. Shapes are documented at the entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "simd.h"

namespace kernels {

using simd::bf16_t;

template <class T>
void bgmv(at::Tensor x, at::Tensor slots, at::Tensor a, at::Tensor b, at::Tensor out, int64_t k, int64_t rank,
          at::Tensor col_start, at::Tensor col_len, at::Tensor slot_info);
template <class T>
void add_rms_norm(at::Tensor h, c10::optional<at::Tensor> delta, at::Tensor w, double eps, at::Tensor out);
template <class T>
void silu_mul(at::Tensor gate_up, at::Tensor out);
template <class T>
void rope_write_kv(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor positions,
                   at::Tensor slot_mapping, at::Tensor k_cache, at::Tensor v_cache, int64_t heads,
                   int64_t kv_heads);
template <class T>
void gemv(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out);
template <class T>
void packed_gemm(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> bias, at::Tensor out);
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
                      at::Tensor lengths, at::Tensor out, double scale, int64_t window, double softcap);

// Explicit instantiations of kernel `name` (its parameter list in parentheses) for both element types.
#define LORASERVE_INSTANTIATE(name, params) \
  template void name<float> params;         \
  template void name<bf16_t> params;

}  // namespace kernels
