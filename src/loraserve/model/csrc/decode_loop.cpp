// A decode-only step's whole layer stack in one call (no adapter on any token, a Llama-shaped
// layer: pre-norms, fused qkv with RoPE, SwiGLU). The same kernels the Python decoder calls one by
// one, chained here without Python between them: at batch 32 that glue was ~6% of SmolLM2's step,
// and the OpenMP worker idled while the engine thread ran it. Every call goes through the checked
// entry points, so each kernel sees exactly the inputs the decoder would give it.
#include "entry_points.h"

namespace {

torch::Tensor decode_layers(torch::Tensor h, const std::vector<torch::Tensor>& attn_norm,
                            const std::vector<torch::Tensor>& mlp_norm, const std::vector<torch::Tensor>& qkv,
                            const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& gate_up,
                            const std::vector<torch::Tensor>& down,
                            const std::vector<c10::optional<torch::Tensor>>& biases,
                            const std::vector<torch::Tensor>& cos, const std::vector<torch::Tensor>& sin,
                            const std::vector<int64_t>& windows, torch::Tensor k_cache, torch::Tensor v_cache,
                            torch::Tensor positions, torch::Tensor slot_mapping, torch::Tensor block_tables,
                            torch::Tensor lengths, int64_t heads, int64_t intermediate, double scale, double softcap,
                            double eps) {
  const size_t L = attn_norm.size();
  TORCH_CHECK(L > 0 && mlp_norm.size() == L && qkv.size() == L && o.size() == L && gate_up.size() == L &&
                  down.size() == L && biases.size() == 4 * L && cos.size() == L && sin.size() == L &&
                  windows.size() == L,
              "decode_layers: one entry per layer in every list (four biases per layer)");
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.size(0) == int64_t(L) && v_cache.sizes() == k_cache.sizes(),
              "decode_layers: the caches must be (L, N, kvh, bs, d), one layer per entry");
  TORCH_CHECK(h.dim() == 2 && h.is_contiguous(), "decode_layers: h must be a contiguous (T, D)");
  const int64_t T = h.size(0), kv_heads = k_cache.size(2), d = k_cache.size(4);
  const int64_t qkv_width = (heads + 2 * kv_heads) * d;  // packed_gemm checks each weight against it
  auto x = torch::empty_like(h);
  auto fused = torch::empty({T, qkv_width}, h.options());
  auto attn = torch::empty({T, heads, d}, h.options());
  auto delta = torch::empty_like(h);  // the attention's output projection, then the MLP's
  auto up = torch::empty({T, 2 * intermediate}, h.options());
  auto act = torch::empty({T, intermediate}, h.options());
  const auto q = fused.narrow(1, 0, heads * d).view({T, heads, d});
  const auto attn_rows = attn.view({T, heads * d});
  for (size_t i = 0; i < L; ++i) {
    const auto keys = k_cache.select(0, int64_t(i)), values = v_cache.select(0, int64_t(i));
    add_rms_norm(h, i == 0 ? c10::nullopt : c10::optional<torch::Tensor>(delta), attn_norm[i], eps, x);
    packed_gemm(x, qkv[i], biases[4 * i], fused);
    rope_write_kv(fused, cos[i], sin[i], positions, slot_mapping, keys, values, heads, kv_heads);
    decode_attention(q, keys, values, block_tables, lengths, attn, scale, windows[i], softcap);
    packed_gemm(attn_rows, o[i], biases[4 * i + 1], delta);
    add_rms_norm(h, delta, mlp_norm[i], eps, x);
    packed_gemm(x, gate_up[i], biases[4 * i + 2], up);
    silu_mul(up, act);
    packed_gemm(act, down[i], biases[4 * i + 3], delta);
  }
  return delta;
}

}  // namespace

void register_decode_loop(pybind11::module& m) {
  // without the GIL: the server's threads run while the engine thread is in the layer stack
  m.def("decode_layers", &decode_layers, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "a decode-only step's whole layer stack, no adapters: the checked kernels chained in C++");
}
