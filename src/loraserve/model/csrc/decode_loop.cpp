// A step's whole layer stack in one call (pre-norm layers: fused qkv with an optional QK-norm
// and RoPE, SwiGLU or GeGLU, optional sandwich norms; LoRA, DoRA and trained biases per token
// slot; each base matrix in the format the decoder reads it in). The same kernels the Python
// decoder calls one by one, chained here without Python between them: at batch 32 that glue was
// ~6% of SmolLM2's step, and the OpenMP worker idled while the engine thread ran it. Every call
// goes through the checked entry points, so each kernel sees exactly the inputs the decoder would
// give it. The first `decodes` rows attend by the paged decode kernel: the decodes, and short
// prompts' tokens as rows (prefill_attention.py's PagedRows); the rows after them are the decoder's
// own Python, called back once per layer.
#include "entry_points.h"

namespace {

using Tensors = std::vector<torch::Tensor>;
using MaybeTensors = std::vector<c10::optional<torch::Tensor>>;

// How the decoder's LinearOps read a base matrix at this step's row count (matrix_formats.py's
// MatrixFormat), with the tensors that format stores, in this order.
enum Format : int64_t {
  kPacked = 0,  // [pack_for_gemm(w)]; the bias fused into the GEMM, as packed.Linears passes it
  kQ4_1 = 1,    // [torch's int4 pack, scales_and_zeros]: torch's own int4 kernel
  kQ8_0 = 2,    // [q int8, d fp32]
  kInt8 = 3,    // [q int8, scales fp32]
  kW8A8 = 4,    // [pack_vnni(q), row sums, scales]
};

// out (T, N) = x (T, K) @ W^T (+ bias): a quantized format's bias added after its product, as
// QuantizedLinears adds it, so the bits equal the decoder's.
// `warm`: the adapters read next, brought towards the cache while the packed GEMM computes.
void matmul(int64_t format, const Tensors& w, const c10::optional<torch::Tensor>& bias, const torch::Tensor& x,
            torch::Tensor& out, const kernels::Spans& warm) {
  static constexpr size_t kTensors[] = {1, 2, 2, 2, 3};
  TORCH_CHECK(format >= kPacked && format <= kW8A8, "decode_layers: unknown matrix format ", format);
  TORCH_CHECK(w.size() == kTensors[format], "decode_layers: a format ", format, " matrix needs ",
              kTensors[format], " tensors, got ", w.size());
  switch (format) {
    case kPacked:
      packed_gemm(x, w[0], bias, out, warm);
      return;
    case kQ4_1: {
      const auto product = at::_weight_int4pack_mm_for_cpu(x, w[0], 32, w[1]);
      TORCH_CHECK(product.sizes() == out.sizes(), "decode_layers: a Q4_1 matrix gives ", product.sizes(),
                  ", the layer needs ", out.sizes());
      out.copy_(product);
      break;
    }
    case kQ8_0:
      gemv_q8_0(x, w[0], w[1], c10::nullopt, out);
      break;
    case kInt8:
      gemv_int8(x, w[0], w[1], c10::nullopt, out);
      break;
    case kW8A8:
      w8a8_gemm(x, w[0], w[1], w[2], out);
      break;
  }
  if (bias.has_value()) out.add_(*bias);
}

// The step's adapters, in the decoder's order (lora/base.py's add_delta): after each fused GEMM,
// its group's BGMV where any slot uses the group, then DoRA's row scale and trained biases' deltas
// where a slot holds them. a, b: 4 per layer (qkv, o, gate_up, down), None where no slot uses it;
// starts, widths, info: 4 each, the group's module columns and slot_info (native.py's NativeLora);
// dora, bias_deltas: 4 each, the group's (L, S + 1, out) tables (slot_tables.py), None where no
// slot has one; dora_rows: 4, the rows of the step's tokens on DoRA slots (read where the layer
// has a base bias: only those rows are rescaled then, as dora.py does).
struct Lora {
  const c10::optional<torch::Tensor>& slots;
  const MaybeTensors &a, &b, &starts, &widths, &info;
  int64_t rank;
  const MaybeTensors &dora, &dora_rows, &bias_deltas;
  c10::optional<torch::Tensor> table_rows;  // slots + 1: each token's row of the tables
  std::vector<int64_t> distinct;  // the step's slots, each once, in the order BGMV's tiles meet them

  // What the group's BGMV will read, for its GEMM to prefetch: each distinct slot's A rows and B
  // rows up to its rank. Nothing where the inputs are not as BGMV takes them (it refuses them).
  kernels::Spans reads(size_t layer, size_t group) const {
    kernels::Spans spans;
    const auto& stack_a = a[4 * layer + group];
    if (!stack_a.has_value() || !info[group].has_value()) return spans;
    const auto& stack_b = *b[4 * layer + group];
    const auto& slot_table = *info[group];
    if (stack_a->dim() != 3 || stack_b.dim() != 3 || !stack_a->is_contiguous() || !stack_b.is_contiguous() ||
        stack_b.size(0) != stack_a->size(0) || slot_table.scalar_type() != at::kLong || slot_table.dim() != 2 ||
        slot_table.size(1) != 2 || !slot_table.is_contiguous())
      return spans;
    const int64_t k = starts[group]->size(0), in = stack_a->size(2), R = stack_b.size(1), O = stack_b.size(2);
    const int64_t elem = stack_a->element_size();
    const int64_t* slot_info = slot_table.data_ptr<int64_t>();
    const char* ap = static_cast<const char*>(stack_a->data_ptr());
    const char* bp = static_cast<const char*>(stack_b.data_ptr());
    for (const int64_t s : distinct) {
      if (s >= stack_a->size(0) || s >= slot_table.size(0)) continue;  // BGMV refuses it
      const int64_t ranks = std::min(rank, slot_info[2 * s]);
      if (ranks == 0 || slot_info[2 * s + 1] == 0) continue;
      spans.push_back({ap + s * R * k * in * elem, ranks * k * in * elem});
      spans.push_back({bp + s * R * O * elem, ranks * O * elem});
    }
    return spans;
  }

  void add(size_t layer, size_t group, const torch::Tensor& x, torch::Tensor& out,
           const c10::optional<torch::Tensor>& bias) const {
    if (!slots.has_value()) return;
    const auto& stack_a = a[4 * layer + group];
    if (stack_a.has_value()) {
      const auto& columns = *starts[group];
      bgmv(x, *slots, *stack_a, *b[4 * layer + group], out, columns.size(0), rank, columns, *widths[group],
           *info[group]);
    }
    if (dora[group].has_value()) {
      const auto scales = dora[group]->select(0, int64_t(layer));
      if (!bias.has_value()) {  // every row: x * 1 leaves base and plain-LoRA rows exact
        out.mul_(scales.index_select(0, *table_rows));
      } else if (dora_rows[group]->numel() > 0) {  // (out - bias) * s + bias on the DoRA rows only
        const auto& rows = *dora_rows[group];
        const auto scale = scales.index_select(0, table_rows->index_select(0, rows));
        out.index_copy_(0, rows, (out.index_select(0, rows) - *bias) * scale + *bias);
      }
    }
    if (bias_deltas[group].has_value())
      out.add_(bias_deltas[group]->select(0, int64_t(layer)).index_select(0, *table_rows));
  }
};

// Each slot >= 0 of `slots` once, in the order of first appearance.
std::vector<int64_t> distinct_slots(const c10::optional<torch::Tensor>& slots) {
  std::vector<int64_t> distinct;
  if (!slots.has_value()) return distinct;
  TORCH_CHECK(slots->scalar_type() == at::kLong && slots->dim() == 1 && slots->is_contiguous(),
              "decode_layers: the token slots must be a contiguous int64 vector");
  const int64_t* p = slots->data_ptr<int64_t>();
  std::vector<bool> seen;
  for (int64_t t = 0; t < slots->numel(); ++t) {
    if (p[t] < 0) continue;
    if (size_t(p[t]) >= seen.size()) seen.resize(p[t] + 1);
    if (!seen[p[t]]) distinct.push_back(p[t]);
    seen[p[t]] = true;
  }
  return distinct;
}

// A layer's norms, six per layer in `norms`: the two pre-norms (required), QK-norm's q and k
// weights (both or neither) and the sandwich norms on the attention's and the MLP's outputs.
enum Norm : size_t { kAttn = 0, kMlp, kQ, kK, kAttnOut, kMlpOut, kNorms };

torch::Tensor decode_layers(torch::Tensor h, const MaybeTensors& norms, const std::vector<int64_t>& formats,
                            const std::vector<Tensors>& matrices, const MaybeTensors& biases, const Tensors& cos,
                            const Tensors& sin, const std::vector<int64_t>& windows, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor positions, torch::Tensor slot_mapping,
                            torch::Tensor block_tables, torch::Tensor lengths,
                            const c10::optional<torch::Tensor>& table_of, int64_t heads, int64_t intermediate,
                            bool gelu, double scale, double softcap, double eps,
                            c10::optional<torch::Tensor> lora_slots, const MaybeTensors& lora_a,
                            const MaybeTensors& lora_b, const MaybeTensors& lora_starts,
                            const MaybeTensors& lora_widths, const MaybeTensors& lora_info, int64_t lora_rank,
                            const MaybeTensors& dora, const MaybeTensors& dora_rows,
                            const MaybeTensors& bias_deltas, int64_t decodes, const pybind11::object& prefill) {
  const size_t L = cos.size();
  TORCH_CHECK(L > 0 && norms.size() == kNorms * L && formats.size() == 4 * L && matrices.size() == 4 * L &&
                  biases.size() == 4 * L && sin.size() == L && windows.size() == L,
              "decode_layers: one entry per layer in every list (six norms, four matrices and biases per layer)");
  for (size_t i = 0; i < L; ++i) {
    const auto norm = [&](Norm n) { return norms[kNorms * i + n].has_value(); };
    TORCH_CHECK(norm(kAttn) && norm(kMlp), "decode_layers: layer ", i, " needs its two pre-norms");
    TORCH_CHECK(norm(kQ) == norm(kK), "decode_layers: layer ", i, " needs both QK-norm weights or neither");
  }
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.size(0) == int64_t(L) && v_cache.sizes() == k_cache.sizes(),
              "decode_layers: the caches must be (L, N, kvh, bs, d), one layer per entry");
  TORCH_CHECK(h.dim() == 2 && h.is_contiguous(), "decode_layers: h must be a contiguous (T, D)");
  TORCH_CHECK(lora_a.size() == 4 * L && lora_b.size() == 4 * L && lora_starts.size() == 4 &&
                  lora_widths.size() == 4 && lora_info.size() == 4,
              "decode_layers: LoRA stacks four per layer, columns and slot_info four in all");
  for (size_t i = 0; i < 4 * L; ++i)
    TORCH_CHECK(lora_a[i].has_value() == lora_b[i].has_value() &&
                    (!lora_a[i].has_value() || (lora_starts[i % 4].has_value() && lora_widths[i % 4].has_value() &&
                                                lora_info[i % 4].has_value())),
                "decode_layers: LoRA entry ", i, " needs A, B, its group's columns and slot_info");
  TORCH_CHECK(dora.size() == 4 && dora_rows.size() == 4 && bias_deltas.size() == 4,
              "decode_layers: DoRA tables, their rows and bias deltas four each");
  bool extras = false;
  for (size_t g = 0; g < 4; ++g) {
    for (const auto* table : {&dora[g], &bias_deltas[g]})
      if (table->has_value()) {
        TORCH_CHECK((*table)->dim() == 3 && (*table)->size(0) == int64_t(L),
                    "decode_layers: a DoRA or bias-delta table must be (L, S + 1, out)");
        extras = true;
      }
    TORCH_CHECK(!dora[g].has_value() || dora_rows[g].has_value(), "decode_layers: DoRA group ", g,
                " needs its rows");
  }
  TORCH_CHECK(!extras || lora_slots.has_value(), "decode_layers: DoRA or bias deltas need the token slots");
  const Lora lora{lora_slots, lora_a, lora_b, lora_starts, lora_widths, lora_info, lora_rank, dora, dora_rows,
                  bias_deltas, extras ? c10::optional<torch::Tensor>(*lora_slots + 1) : c10::nullopt,
                  distinct_slots(lora_slots)};
  const int64_t T = h.size(0), kv_heads = k_cache.size(2), d = k_cache.size(4);
  TORCH_CHECK(decodes >= 0 && decodes <= T && (decodes == T || !prefill.is_none()),
              "decode_layers: decodes must be in [0, T], with a prefill callback for the other rows");
  const int64_t qkv_width = (heads + 2 * kv_heads) * d;  // each matrix's kernel checks it against this
  auto x = torch::empty_like(h);
  auto fused = torch::empty({T, qkv_width}, h.options());
  auto attn = torch::empty({T, heads, d}, h.options());
  auto delta = torch::empty_like(h);  // the attention's output projection, then the MLP's
  auto normed = torch::empty_like(h);  // delta after its sandwich norm (Gemma 2/3)
  auto up = torch::empty({T, 2 * intermediate}, h.options());
  auto act = torch::empty({T, intermediate}, h.options());
  const auto q = fused.narrow(1, 0, heads * d).view({T, heads, d});
  const auto attn_rows = attn.view({T, heads * d});
  const auto decode_q = q.narrow(0, 0, decodes), decode_out = attn.narrow(0, 0, decodes);
  // a sub-layer's output as the residual stream adds it: after its sandwich norm where it has one
  const auto output = [&](const c10::optional<torch::Tensor>& norm) -> const torch::Tensor& {
    if (!norm.has_value()) return delta;
    add_rms_norm(delta, c10::nullopt, *norm, eps, normed);
    return normed;
  };
  const torch::Tensor* residual = nullptr;  // the previous layer's MLP output, added lazily
  for (size_t i = 0; i < L; ++i) {
    const auto norm = [&](Norm n) -> const c10::optional<torch::Tensor>& { return norms[kNorms * i + n]; };
    const auto keys = k_cache.select(0, int64_t(i)), values = v_cache.select(0, int64_t(i));
    const auto previous = residual == nullptr ? c10::nullopt : c10::optional<torch::Tensor>(*residual);
    add_rms_norm(h, previous, *norm(kAttn), eps, x);
    matmul(formats[4 * i], matrices[4 * i], biases[4 * i], x, fused, lora.reads(i, 0));
    lora.add(i, 0, x, fused, biases[4 * i]);
    if (norm(kQ).has_value()) qk_norm(fused, *norm(kQ), *norm(kK), heads, kv_heads, eps);
    rope_write_kv(fused, cos[i], sin[i], positions, slot_mapping, keys, values, heads, kv_heads);
    if (decodes > 0)
      decode_attention(decode_q, keys, values, block_tables, lengths, decode_out, scale, windows[i], softcap,
                       table_of);
    if (decodes < T) {
      pybind11::gil_scoped_acquire python;
      prefill(int64_t(i), q, attn);
    }
    matmul(formats[4 * i + 1], matrices[4 * i + 1], biases[4 * i + 1], attn_rows, delta, lora.reads(i, 1));
    lora.add(i, 1, attn_rows, delta, biases[4 * i + 1]);
    add_rms_norm(h, output(norm(kAttnOut)), *norm(kMlp), eps, x);
    matmul(formats[4 * i + 2], matrices[4 * i + 2], biases[4 * i + 2], x, up, lora.reads(i, 2));
    lora.add(i, 2, x, up, biases[4 * i + 2]);
    if (gelu) {
      gelu_tanh_mul(up, act);
    } else {
      silu_mul(up, act);
    }
    matmul(formats[4 * i + 3], matrices[4 * i + 3], biases[4 * i + 3], act, delta, lora.reads(i, 3));
    lora.add(i, 3, act, delta, biases[4 * i + 3]);
    residual = &output(norm(kMlpOut));
  }
  return *residual;
}

}  // namespace

void register_decode_loop(pybind11::module& m) {
  // without the GIL: the server's threads run while the engine thread is in the layer stack
  m.def("decode_layers", &decode_layers, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "a step's whole layer stack with its adapters, each base matrix in its format: the checked "
        "kernels chained in C++");
}
