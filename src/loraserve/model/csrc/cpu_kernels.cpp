// loraserve's CPU kernels: each replaces a chain of small PyTorch ops whose per-op overhead
// dominates a decode step. The entry points here check every input (dtype, device, shape, layout,
// index bounds) and call the kernel's fp32 or bf16 instantiation (kernels.h). One build per ISA
// (native.py): the same source compiled for AVX-512(+BF16), AVX2+FMA or no vector ISA.
#include <torch/extension.h>

#include "entry_points.h"
#include "kernels.h"

namespace {

bool is_supported(const torch::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

// A CPU tensor of `dtype` with `dims` dimensions and unit stride on its last one.
void check_rows(const torch::Tensor& t, const char* name, at::ScalarType dtype, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got ", t.dim());
  TORCH_CHECK(t.stride(-1) == 1, name, " must have contiguous rows");
}

void check_contiguous(const torch::Tensor& t, const char* name, at::ScalarType dtype, int64_t dims) {
  check_rows(t, name, dtype, dims);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Every value of an int64 index tensor of `count` entries lies in [low, high).
void check_index(const torch::Tensor& t, const char* name, int64_t count, int64_t low, int64_t high) {
  check_contiguous(t, name, at::kLong, 1);
  TORCH_CHECK(t.size(0) == count, name, " must have ", count, " entries, got ", t.size(0));
  const int64_t* p = t.data_ptr<int64_t>();  // a plain loop: a few ns per entry, no torch op
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(p[i] >= low && p[i] < high, name, "[", i, "] = ", p[i], " is outside [", low, ", ", high, ")");
}

at::ScalarType checked_dtype(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(is_supported(t), name, " must be float32 or bfloat16, got ", c10::toString(t.scalar_type()));
  return t.scalar_type();
}

// Calls kernel(T()) with T the element type of a checked dtype, AT_DISPATCH-style.
template <class F>
void dispatch(at::ScalarType dtype, F kernel) {
  if (dtype == at::kFloat) {
    kernel(float());
  } else {
    kernel(kernels::bf16_t());
  }
}

}  // namespace

// out (T, O') += per token t with slot s = slots[t] >= 0: (x[t] @ A[s]^T) @ B[s], for a fused group
// of k modules. x (T, in); A (S, R*k, in), row i*k + j = rank i of module j; B (S, R, O), row i =
// rank i of every module, module j in columns [col_start[j], col_start[j] + col_len[j]) — so each
// token's B rows are read as one contiguous stream. slot_info (S, 2): the adapter's rank and a
// bit mask of the group's modules it targets; only those rows are read (at most `rank` ranks).
// Consecutive tokens of one slot (a prompt being prefilled) share each read of its rows.
void bgmv(torch::Tensor x, torch::Tensor slots, torch::Tensor a, torch::Tensor b, torch::Tensor out,
          int64_t k, int64_t rank, torch::Tensor col_start, torch::Tensor col_len, torch::Tensor slot_info) {
  const auto dtype = checked_dtype(x, "x");
  check_contiguous(x, "x", dtype, 2);
  check_contiguous(a, "A", dtype, 3);
  check_contiguous(b, "B", dtype, 3);
  check_rows(out, "out", dtype, 2);
  const int64_t T = x.size(0), S = a.size(0), R = b.size(1), O = b.size(2);
  TORCH_CHECK(k >= 1 && k <= 8 && rank >= 0 && rank <= R, "bgmv: k must be in [1, 8] and rank in [0, R]");
  TORCH_CHECK(a.size(1) == R * k && a.size(2) == x.size(1) && b.size(0) == S,
              "bgmv: A must be (S, R*k, in) and B (S, R, out) for x (T, in)");
  TORCH_CHECK(out.size(0) == T && out.size(1) >= O, "bgmv: out must be (T, >= B's columns)");
  check_index(slots, "slots", T, -1, S);
  check_contiguous(slot_info, "slot_info", at::kLong, 2);
  TORCH_CHECK(slot_info.size(0) == S && slot_info.size(1) == 2, "bgmv: slot_info must be (S, 2)");
  check_index(col_start, "col_start", k, 0, O + 1);
  check_index(col_len, "col_len", k, 0, O + 1);
  for (int64_t j = 0; j < k; ++j)
    TORCH_CHECK(col_start.data_ptr<int64_t>()[j] + col_len.data_ptr<int64_t>()[j] <= O,
                "bgmv: module ", j, "'s columns run past B's width");
  const int64_t* info = slot_info.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s)
    TORCH_CHECK(info[2 * s] >= 0 && info[2 * s + 1] >= 0 && info[2 * s + 1] < (int64_t(1) << k),
                "bgmv: slot_info[", s, "] must hold a rank >= 0 and a mask of the group's k modules");
  dispatch(dtype, [&](auto elem) {
    kernels::bgmv<decltype(elem)>(x, slots, a, b, out, k, rank, col_start, col_len, slot_info);
  });
}

// RMSNorm with an optional residual add first: h (T, D) += delta (in place), then
// out (T, D) = w * (h * rsqrt(mean(h^2) + eps)); bf16 rounds where Hugging Face's Llama does.
void add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor w, double eps,
                  torch::Tensor out) {
  const auto dtype = checked_dtype(h, "h");
  check_rows(h, "h", dtype, 2);
  check_contiguous(w, "weight", dtype, 1);
  check_rows(out, "out", dtype, 2);
  TORCH_CHECK(w.size(0) == h.size(1) && out.sizes() == h.sizes(), "add_rms_norm: h, out (T, D), weight (D,)");
  if (delta.has_value()) {
    check_rows(*delta, "delta", dtype, 2);
    TORCH_CHECK(delta->sizes() == h.sizes(), "add_rms_norm: delta must have h's shape");
  }
  dispatch(dtype, [&](auto elem) { kernels::add_rms_norm<decltype(elem)>(h, delta, w, eps, out); });
}

namespace {

at::ScalarType check_gated(const char* name, const torch::Tensor& gate_up, const torch::Tensor& out) {
  const auto dtype = checked_dtype(gate_up, "gate_up");
  check_rows(gate_up, "gate_up", dtype, 2);
  check_rows(out, "out", dtype, 2);
  TORCH_CHECK(gate_up.size(0) == out.size(0) && gate_up.size(1) == 2 * out.size(1), name,
              ": gate_up must be (T, 2I) for out (T, I)");
  return dtype;
}

}  // namespace

// SwiGLU's activation: out (T, I) = silu(gate) * up for gate_up (T, 2I) = [gate | up].
void silu_mul(torch::Tensor gate_up, torch::Tensor out) {
  const auto dtype = check_gated("silu_mul", gate_up, out);
  dispatch(dtype, [&](auto elem) { kernels::silu_mul<decltype(elem)>(gate_up, out); });
}

// GeGLU's activation (Gemma): out (T, I) = gelu_tanh(gate) * up for gate_up (T, 2I) = [gate | up].
void gelu_tanh_mul(torch::Tensor gate_up, torch::Tensor out) {
  const auto dtype = check_gated("gelu_tanh_mul", gate_up, out);
  dispatch(dtype, [&](auto elem) { kernels::gelu_tanh_mul<decltype(elem)>(gate_up, out); });
}

// QK-norm (Qwen3, Gemma 3): RMSNorm over each of the H q heads (weight q_w (d,)) and the kvh k
// heads (k_w) of a fused qkv (T, (H + 2 kvh) d), in place, before RoPE.
void qk_norm(torch::Tensor qkv, torch::Tensor q_w, torch::Tensor k_w, int64_t heads, int64_t kv_heads, double eps) {
  const auto dtype = checked_dtype(qkv, "qkv");
  check_rows(qkv, "qkv", dtype, 2);
  check_contiguous(q_w, "q_w", dtype, 1);
  check_contiguous(k_w, "k_w", dtype, 1);
  const int64_t d = q_w.size(0);
  TORCH_CHECK(heads > 0 && kv_heads > 0 && k_w.size(0) == d && qkv.size(1) == (heads + 2 * kv_heads) * d,
              "qk_norm: qkv must be (T, (heads + 2 kv_heads) d) for q_w and k_w (d,), got ", qkv.sizes(), " and ",
              q_w.sizes());
  dispatch(dtype, [&](auto elem) { kernels::qk_norm<decltype(elem)>(qkv, q_w, k_w, heads, kv_heads, eps); });
}

// Rotary embedding of the q and k heads of a fused qkv row (T, (H + 2 kvh) d), in place
// (rotate-half convention over the first r dims of each head, r <= d the tables' width: partial
// rotary leaves the rest; cos/sin (P, r) fp32 tables indexed by position), then each token's
// rotated k and its v written to the layer's paged KV cache (N, kvh, bs, d) at slot_mapping[t] =
// block * bs + offset.
void rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                   torch::Tensor slot_mapping, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   int64_t kv_heads) {
  const auto dtype = checked_dtype(qkv, "qkv");
  check_rows(qkv, "qkv", dtype, 2);
  check_contiguous(k_cache, "k_cache", dtype, 4);
  check_contiguous(v_cache, "v_cache", dtype, 4);
  check_contiguous(cos, "cos", at::kFloat, 2);
  check_contiguous(sin, "sin", at::kFloat, 2);
  const int64_t T = qkv.size(0), N = k_cache.size(0), bs = k_cache.size(2), d = k_cache.size(3);
  TORCH_CHECK(heads > 0 && kv_heads > 0 && k_cache.size(1) == kv_heads && d % 2 == 0,
              "rope_write_kv: the cache must be (N, kv_heads, block_size, d) with an even d");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "rope_write_kv: k and v caches differ in shape");
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * d, "rope_write_kv: qkv must be (T, (H + 2 kvh) d)");
  TORCH_CHECK(cos.size(1) <= d && cos.size(1) % 2 == 0 && cos.size(1) > 0 && sin.sizes() == cos.sizes(),
              "rope_write_kv: cos/sin must be (P, r) with an even r <= d");
  check_index(positions, "positions", T, 0, cos.size(0));
  check_index(slot_mapping, "slot_mapping", T, 0, N * bs);
  dispatch(dtype, [&](auto elem) {
    kernels::rope_write_kv<decltype(elem)>(qkv, cos, sin, positions, slot_mapping, k_cache, v_cache, heads,
                                           kv_heads);
  });
}

// One query token per row over its cached keys: q (B, H, d) → out (B, H, d). Row b's position p
// lives in block block_tables[t, p / bs] of the paged caches (N, kvh, bs, d), for p < lengths[b],
// where t = table_of[b] (rows that share a table: a prompt's tokens), or t = b. GQA: query head h reads KV head h / (H / kvh). Scores, softmax and the
// weighted sum in fp32. window > 0: only the last `window` positions are attended (transformers'
// sliding window: key j for query i when j > i - window); softcap > 0: Gemma 2's logit cap.
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor lengths, torch::Tensor out, double scale,
                      int64_t window, double softcap, const c10::optional<torch::Tensor>& table_of) {
  const auto dtype = checked_dtype(q, "q");
  check_rows(q, "q", dtype, 3);
  check_rows(out, "out", dtype, 3);
  check_contiguous(k_cache, "k_cache", dtype, 4);
  check_contiguous(v_cache, "v_cache", dtype, 4);
  check_contiguous(block_tables, "block_tables", at::kLong, 2);
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2), N = k_cache.size(0), kvh = k_cache.size(1);
  const int64_t bs = k_cache.size(2), S = block_tables.size(0), M = block_tables.size(1);
  TORCH_CHECK(out.sizes() == q.sizes(), "decode_attention: out must have q's shape");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && k_cache.size(3) == d && kvh > 0 && H % kvh == 0,
              "decode_attention: caches (N, kvh, bs, d) with H a multiple of kvh");
  if (table_of.has_value()) {
    check_index(*table_of, "table_of", B, 0, S);
  } else {
    TORCH_CHECK(S == B, "decode_attention: block_tables must be (B, M), or (S, M) with table_of (B,)");
  }
  check_index(lengths, "lengths", B, 1, M * bs + 1);
  TORCH_CHECK(window >= 0 && softcap >= 0.0, "decode_attention: window and softcap must be >= 0 (0: off)");
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* rows = table_of.has_value() ? table_of->data_ptr<int64_t>() : nullptr;
  const int64_t* lens = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = rows == nullptr ? b : rows[b];
    for (int64_t j = 0; j < (lens[b] + bs - 1) / bs; ++j)
      TORCH_CHECK(tables[t * M + j] >= 0 && tables[t * M + j] < N, "block_tables[", t, ", ", j, "] = ",
                  tables[t * M + j], " is outside [0, ", N, ")");
  }
  dispatch(dtype, [&](auto elem) {
    kernels::decode_attention<decltype(elem)>(q, k_cache, v_cache, block_tables, lengths, out, scale, window,
                                              softcap, table_of);
  });
}

// What every GEMV entry point shares: x (M, K) with unit-stride rows, out (M, n) of x's dtype,
// bias (n,) of it where given; the weight's own checks stay with each entry point.
at::ScalarType check_gemv(const char* name, const torch::Tensor& x, int64_t n,
                          const c10::optional<torch::Tensor>& bias, const torch::Tensor& out) {
  const auto dtype = checked_dtype(x, "x");
  check_rows(x, "x", dtype, 2);
  check_rows(out, "out", dtype, 2);
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == n, name, ": out must be (M, N)");
  if (bias.has_value()) {
    check_contiguous(*bias, "bias", dtype, 1);
    TORCH_CHECK(bias->size(0) == n, name, ": bias must be (N,)");
  }
  return dtype;
}

// out (M, N) = x (M, K) @ w (N, K)^T (+ bias (N)), for the few rows of a single stream's decode.
void gemv(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, torch::Tensor out) {
  check_contiguous(w, "w", checked_dtype(x, "x"), 2);
  const auto dtype = check_gemv("gemv", x, w.size(0), bias, out);
  TORCH_CHECK(w.size(1) == x.size(1), "gemv: w must be (N, K) for x (M, K)");
  dispatch(dtype, [&](auto elem) { kernels::gemv<decltype(elem)>(x, w, bias, out); });
}

// out (M, N) = x (M, K) @ w^T (+ bias (N)) at any M, w packed by packed.py's pack_for_gemm:
// (ceil(N/16), ceil(K/P), 16P) of x's dtype, P = 2 for bf16 (pairs of k), 1 for fp32.
// `warm`: memory the caller reads next (decode_loop.cpp's adapters), brought towards the cache
// while the GEMM computes; it changes no result.
void packed_gemm(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, torch::Tensor out,
                 const kernels::Spans& warm) {
  const auto dtype = check_gemv("packed_gemm", x, out.size(1), bias, out);
  check_contiguous(w, "w", dtype, 3);
  const int64_t per_word = dtype == at::kFloat ? 1 : 2, N = out.size(1), K = x.size(1);
  TORCH_CHECK(w.size(0) == (N + 15) / 16 && w.size(1) == (K + per_word - 1) / per_word && w.size(2) == 16 * per_word,
              "packed_gemm: w must be (ceil(N/16), ceil(K/", per_word, "), ", 16 * per_word,
              ") for x (M, K) and out (M, N), got ", w.sizes());
  dispatch(dtype, [&](auto elem) { kernels::packed_gemm<decltype(elem)>(x, w, bias, out, warm); });
}

// Weight-only int8: out (M, N) = (x @ q^T) * scales (+ bias); q (N, K) int8, scales (N,) fp32.
void gemv_int8(torch::Tensor x, torch::Tensor q, torch::Tensor scales, c10::optional<torch::Tensor> bias,
               torch::Tensor out) {
  const auto dtype = check_gemv("gemv_int8", x, q.size(0), bias, out);
  check_contiguous(q, "q", at::kChar, 2);
  check_contiguous(scales, "scales", at::kFloat, 1);
  TORCH_CHECK(q.size(1) == x.size(1), "gemv_int8: q must be (N, K) for x (M, K)");
  TORCH_CHECK(scales.size(0) == q.size(0), "gemv_int8: scales must be (N,)");
  dispatch(dtype, [&](auto elem) { kernels::gemv_int8<decltype(elem)>(x, q, scales, bias, out); });
}

// GGUF Q8_0: out (M, N) = x @ (q * d)^T (+ bias); q (N, K) int8, d (N, K/32) fp32.
void gemv_q8_0(torch::Tensor x, torch::Tensor q, torch::Tensor d, c10::optional<torch::Tensor> bias,
               torch::Tensor out) {
  const auto dtype = check_gemv("gemv_q8_0", x, q.size(0), bias, out);
  check_contiguous(q, "q", at::kChar, 2);
  check_contiguous(d, "d", at::kFloat, 2);
  TORCH_CHECK(q.size(1) == x.size(1) && q.size(1) % 32 == 0,
              "gemv_q8_0: q must be (N, K) for x (M, K), K a multiple of 32");
  TORCH_CHECK(d.size(0) == q.size(0) && d.size(1) == q.size(1) / 32, "gemv_q8_0: d must be (N, K/32)");
  dispatch(dtype, [&](auto elem) { kernels::gemv_q8_0<decltype(elem)>(x, q, d, bias, out); });
}

// W8A8: out (M, N) = (int8(x) @ q^T) * sx * sw, x quantized per row here; w the int8 weights
// packed for VPDPBUSD, (ceil(N/16), ceil(K/4), 64) (w8a8.py's pack_vnni), wsum (N,) int32 their
// row sums (the offset of unsigned activations), sw (N,) fp32 their scales.
void w8a8_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor wsum, torch::Tensor sw, torch::Tensor out) {
  const auto dtype = check_gemv("w8a8_gemm", x, out.size(1), c10::nullopt, out);
  check_contiguous(w, "w", at::kChar, 3);
  check_contiguous(wsum, "wsum", at::kInt, 1);
  check_contiguous(sw, "sw", at::kFloat, 1);
  const int64_t N = out.size(1), K = x.size(1);
  TORCH_CHECK(w.size(0) == (N + 15) / 16 && w.size(1) == (K + 3) / 4 && w.size(2) == 64,
              "w8a8_gemm: w must be (ceil(N/16), ceil(K/4), 64) for x (M, K) and out (M, N)");
  TORCH_CHECK(K <= 66000, "w8a8_gemm: K = ", K, " > 66000 would overflow its int32 sums");
  TORCH_CHECK(wsum.size(0) == N && sw.size(0) == N, "w8a8_gemm: wsum and sw must be (N,)");
  dispatch(dtype, [&](auto elem) { kernels::w8a8_gemm<decltype(elem)>(x, w, wsum, sw, out); });
}

// W8A8 before a GEMM: xu (M, K) uint8 = int8(x) + 128 per row, sx (M,) fp32 its scales.
void w8a8_quantize(torch::Tensor x, torch::Tensor xu, torch::Tensor sx) {
  const auto dtype = checked_dtype(x, "x");
  check_rows(x, "x", dtype, 2);
  check_contiguous(xu, "xu", at::kByte, 2);
  check_contiguous(sx, "sx", at::kFloat, 1);
  TORCH_CHECK(xu.sizes() == x.sizes() && sx.size(0) == x.size(0), "w8a8_quantize: xu must be (M, K), sx (M,)");
  dispatch(dtype, [&](auto elem) { kernels::w8a8_quantize<decltype(elem)>(x, xu, sx); });
}

// W8A8 after a GEMM: out (M, N) = acc * sx[m] * sw[n], acc (M, N) fp32 integer sums.
void w8a8_rescale(torch::Tensor acc, torch::Tensor sx, torch::Tensor sw, torch::Tensor out) {
  check_rows(acc, "acc", at::kFloat, 2);
  const auto dtype = checked_dtype(out, "out");
  check_rows(out, "out", dtype, 2);
  check_contiguous(sx, "sx", at::kFloat, 1);
  check_contiguous(sw, "sw", at::kFloat, 1);
  TORCH_CHECK(out.sizes() == acc.sizes() && sx.size(0) == acc.size(0) && sw.size(0) == acc.size(1),
              "w8a8_rescale: out must be acc's (M, N), sx (M,), sw (N,)");
  dispatch(dtype, [&](auto elem) { kernels::w8a8_rescale<decltype(elem)>(acc, sx, sw, out); });
}

// One (module, rank) run of an adapter's slot image: per entry n, a[n] (r, in) into rows
// column + i * stride of image_a[layers[n]] (L, k*R, in), and b[n] (out, r) transposed and times
// scales[n] into image_b[layers[n]] (L, R, fan_out) at columns row_start.. (lora/native.py).
void lora_image(std::vector<torch::Tensor> a, std::vector<torch::Tensor> b, std::vector<double> scales,
                std::vector<int64_t> layers, torch::Tensor image_a, torch::Tensor image_b, int64_t column,
                int64_t stride, int64_t row_start) {
  const auto dtype = checked_dtype(image_a, "image_a");
  check_contiguous(image_a, "image_a", dtype, 3);
  check_contiguous(image_b, "image_b", dtype, 3);
  const size_t count = a.size();
  TORCH_CHECK(b.size() == count && scales.size() == count && layers.size() == count,
              "lora_image: a, b, scales and layers must have one entry each");
  const int64_t L = image_a.size(0), rows = image_a.size(1), fan_in = image_a.size(2);
  TORCH_CHECK(image_b.size(0) == L && stride > 0 && column >= 0 && column < stride && row_start >= 0,
              "lora_image: image_a (L, k*R, in), image_b (L, R, out), 0 <= column < stride");
  for (size_t n = 0; n < count; ++n) {
    check_contiguous(a[n], "a[n]", dtype, 2);
    check_contiguous(b[n], "b[n]", dtype, 2);
    const int64_t r = a[n].size(0);
    TORCH_CHECK(layers[n] >= 0 && layers[n] < L, "lora_image: layers[", n, "] = ", layers[n], " is outside [0, ", L, ")");
    TORCH_CHECK(a[n].size(1) == fan_in && column + (r - 1) * stride < rows && b[n].size(1) == r &&
                    r <= image_b.size(1) && row_start + b[n].size(0) <= image_b.size(2),
                "lora_image: entry ", n, " does not fit the image");
  }
  dispatch(dtype, [&](auto elem) {
    kernels::lora_image<decltype(elem)>(a, b, scales, layers, image_a, image_b, column, stride, row_start);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bgmv", &bgmv, "batched LoRA, one adapter slot per token");
  m.def("add_rms_norm", &add_rms_norm, "optional residual add, then RMSNorm");
  m.def("silu_mul", &silu_mul, "SwiGLU activation: silu(gate) * up");
  m.def("gelu_tanh_mul", &gelu_tanh_mul, "GeGLU activation: gelu(gate, tanh form) * up");
  m.def("qk_norm", &qk_norm, "RMSNorm per q and k head of a fused qkv, in place");
  m.def("rope_write_kv", &rope_write_kv, "rotary embedding in place, then k/v into the KV cache");
  m.def("gemv", &gemv, "x @ w^T (+ bias) for a few rows, streaming the weights once");
  m.def(
      "packed_gemm",
      [](torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, torch::Tensor out) {
        packed_gemm(x, w, bias, out, {});
      },
      "x @ w^T (+ bias) on weights packed in groups of 16 channels");
  m.def("packed_gemm_tiled", [](bool bf16) { return bf16 ? kernels::packed_gemm_tiled<kernels::bf16_t>() : kernels::packed_gemm_tiled<float>(); },
        "whether this build runs packed_gemm for bf16 (else fp32) in register tiles, not the plain loop");
  m.def("gemv_int8", &gemv_int8, "weight-only int8 x @ q^T * scales (+ bias) for a few rows");
  m.def("gemv_q8_0", &gemv_q8_0, "GGUF Q8_0 x @ (q * d)^T (+ bias) for a few rows");
  m.def("w8a8_gemm", &w8a8_gemm, "packed int8 weights times per-row int8 activations");
  m.def("w8a8_quantize", &w8a8_quantize, "rows to int8 (+128, uint8) with one scale each");
  m.def("w8a8_rescale", &w8a8_rescale, "integer sums times row and column scales (+ bias)");
  // without the GIL: it runs on the adapter-read thread while the engine thread steps
  m.def("lora_image", &lora_image, py::call_guard<py::gil_scoped_release>(),
        "an adapter's factors into its slot image, in one pass");
  m.def("decode_attention", &decode_attention,
        "one-token attention over cached keys per row (row r reads block_tables[table_of[r]], or row r)");
  register_decode_loop(m);
  m.def("vector_width", [] { return int64_t(simd::Vec::W); },
        "fp32 lanes of this build: 16 AVX-512, 8 AVX2, 1 scalar");
}
