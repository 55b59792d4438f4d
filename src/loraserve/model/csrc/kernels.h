// The kernels of each dtype, declared once: cpu_kernels.cpp checks every input, then calls the
// bf16 or fp32 version. Shapes are documented at the entry points.
#pragma once

#include <torch/extension.h>

#define LORASERVE_KERNELS(NS)                                                                      \
  namespace NS {                                                                                   \
  void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out, \
            int64_t k, int64_t rank, torch::Tensor col_start, torch::Tensor col_len,                \
            torch::Tensor slot_info);                                                              \
  void add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor w, double eps, \
                    torch::Tensor out);                                                            \
  void silu_mul(torch::Tensor gate_up, torch::Tensor out);                                         \
  void rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions, \
                     torch::Tensor slot_mapping, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads, \
                     int64_t kv_heads);                                                            \
  void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,               \
                        torch::Tensor block_tables, torch::Tensor lengths, torch::Tensor out, double scale, \
                        int64_t window, double softcap);                                           \
  }

LORASERVE_KERNELS(bf16)
LORASERVE_KERNELS(f32)

namespace f32 {
int64_t vector_width();  // fp32 lanes of this build
}
