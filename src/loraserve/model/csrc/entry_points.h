// The checked entry points of cpu_kernels.cpp (each validates its inputs, then runs the kernel of
// their dtype), for the units that chain them: decode_loop.cpp runs a whole layer stack through them.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "kernels.h"

void add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor w, double eps,
                  torch::Tensor out);
void silu_mul(torch::Tensor gate_up, torch::Tensor out);
void gelu_tanh_mul(torch::Tensor gate_up, torch::Tensor out);
void qk_norm(torch::Tensor qkv, torch::Tensor q_w, torch::Tensor k_w, int64_t heads, int64_t kv_heads, double eps);
void rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                   torch::Tensor slot_mapping, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   int64_t kv_heads);
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor block_tables,
                      torch::Tensor lengths, torch::Tensor out, double scale, int64_t window, double softcap,
                      const c10::optional<torch::Tensor>& table_of);
void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out,
          int64_t k, int64_t rank, torch::Tensor col_start, torch::Tensor col_len, torch::Tensor slot_info);
void packed_gemm(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, torch::Tensor out,
                 const kernels::Spans& warm);
void gemv_int8(torch::Tensor x, torch::Tensor q, torch::Tensor scales, c10::optional<torch::Tensor> bias,
               torch::Tensor out);
void gemv_q8_0(torch::Tensor x, torch::Tensor q, torch::Tensor d, c10::optional<torch::Tensor> bias,
               torch::Tensor out);
void w8a8_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor wsum, torch::Tensor sw, torch::Tensor out);

// decode_loop.cpp: adds decode_layers (the entry points above chained over a layer stack) to m.
void register_decode_loop(pybind11::module& m);
