"""Quantized base weights (``option.quantize=int8|q4|q8|w8a8``) against the dequantized model
(the same engine with its base products done by ``F.linear`` on the dequantized weights; for
w8a8 with each product's input rounded per token as the kernel rounds it), with and without an
unmerged LoRA adapter, one stream (the GEMVs) and a batch of 9 (w8a8's int8 GEMM): in fp32 every
greedy token equal and log-probs within 1e-4; in bf16 the first token equal and its log-prob
within 0.05 (bf16 rounding of the products; two bf16 GEMMs break a near-tie of a random model
differently later on); merged LoRA refused. The quantization error itself (against the original
weights) is at most half a step per weight, checked on the weights."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.errors import ConfigError
from loraserve.model.int4 import GROUP, Q4Format, dequantize_groups, q4_available, quantize_groups
from loraserve.model.int8 import Int8Format, int8_available, quantize_rows
from loraserve.model.native import cpu_kernels
from loraserve.model.packed import Linears
from loraserve.model.q8 import BLOCK, Q8Format, dequantize_blocks, quantize_blocks
from loraserve.model.quantized import QuantizedLinears
from loraserve.model.w8a8 import W8A8Format, fake_quantize, w8a8_available
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)
CPU = torch.device("cpu")
NATIVE = cpu_kernels() is not None
FORMATS = {
    "int8": (int8_available(CPU), Int8Format),
    "q4": (q4_available(CPU), Q4Format),
    "q8": (NATIVE, Q8Format),
    "w8a8": (w8a8_available(CPU), W8A8Format),
}


class FakeQuantizedLinears(Linears):
    """W8A8's reference: the dequantized weights through ``F.linear``, each product's input
    rounded per row as the kernel rounds it."""

    def __call__(self, x, layer, name, bias):
        return super().__call__(fake_quantize(x), layer, name, bias)

    def head(self, x):
        return super().head(fake_quantize(x))


def test_int8_rows_quantize_within_half_a_step():
    weight = torch.randn(64, 48) * torch.linspace(0.01, 3, 64)[:, None]  # rows of very different scale
    q, scales = quantize_rows(weight)
    assert q.dtype is torch.int8 and q.abs().max() <= 127
    error = (q.float() * scales[:, None] - weight).abs()
    assert bool((error <= scales[:, None] / 2 + 1e-6).all())


def test_q4_groups_quantize_within_half_a_step_and_keep_q4_1_blocks():
    weight = torch.randn(32, 4 * GROUP) * torch.linspace(0.01, 3, 32)[:, None]
    q, d, m = quantize_groups(weight)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    step = d.repeat_interleave(GROUP, dim=1)
    approx = dequantize_groups(q, d, m + 8 * d)
    assert bool(((approx - weight).abs() <= step / 2 + 1e-5).all())
    # a Q4_1 block always holds its minimum (q=0) and maximum (q=15): quantizing what a GGUF
    # Q4_1 file dequantizes to gives its blocks back
    q2, d2, m2 = quantize_groups(approx)
    assert torch.equal(q2, q)
    assert torch.allclose(d2, d, rtol=1e-5) and torch.allclose(m2, m, atol=1e-6)


def test_q8_blocks_quantize_within_half_a_step_and_keep_q8_0_blocks():
    weight = torch.randn(16, 4 * BLOCK) * torch.linspace(0.01, 3, 16)[:, None]
    q, d = quantize_blocks(weight)
    assert q.dtype is torch.int8 and int(q.abs().max()) <= 127
    approx = dequantize_blocks(q, d)
    assert bool(((approx - weight).abs() <= d.repeat_interleave(BLOCK, dim=1) / 2 + 1e-6).all())
    q2, d2 = quantize_blocks(approx)  # a Q8_0 block holds its largest magnitude: blocks come back
    assert torch.equal(q2, q) and torch.equal(d2, d)


@pytest.mark.parametrize("kind", list(FORMATS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantized_tokens_equal_the_dequantized_model(tmp_path, dtype, kind, monkeypatch):
    available, fmt = FORMATS[kind]
    if not available:
        pytest.skip(f"no CPU {kind} kernel")
    if dtype == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 on this CPU")
    base = make_tiny_llama(tmp_path / "base")
    adapter = make_peft_adapter(base, tmp_path / "qv", rank=4)
    config = EngineConfig(model_id=str(base), dtype=dtype, max_model_len=64, max_lora_rank=8, quantize=kind)
    engine = LLMEngine(config)
    engine.register_adapter("qv", adapter)
    assert engine.runner.info()["linear"] == fmt.name
    assert not NATIVE or kind == "q4" or linears_native(engine)
    linears = engine.runner.linears
    assert isinstance(linears, QuantizedLinears)
    assert all(stored is not None for layer in linears.stored for stored in layer.values())
    prompts = ["hello world", "the quick brown fox", "one two three four"]
    adapters = [None, "qv", "qv"]
    calls = _count_kernel_calls(monkeypatch, fmt)
    quantized = _one_at_a_time(engine, prompts, adapters)  # a single stream decodes on the kernel
    assert calls[0] > 0
    quantized += engine.generate(prompts * 3, adapters * 3, GREEDY)  # 9 rows: w8a8's GEMM

    runner = engine.runner  # the reference: the dequantized weights through F.linear
    reference_linears = FakeQuantizedLinears if kind == "w8a8" else Linears
    runner.decoder.linears = runner.linears = reference_linears(runner.weights, 1, enabled=False)
    reference = _one_at_a_time(engine, prompts, adapters)
    reference += engine.generate(prompts * 3, adapters * 3, GREEDY)
    runner.decoder.linears = runner.linears = linears
    if dtype == "fp32":  # only the accumulation order differs: every greedy token is the same
        assert [r.token_ids for r in quantized] == [r.token_ids for r in reference]
        gap = max(abs(a - b) for q, r in zip(quantized, reference) for a, b in zip(q.logprobs, r.logprobs))
        assert gap < 1e-4
    else:  # two bf16 GEMMs round differently: a near-tie of this random model may break later
        assert [r.token_ids[0] for r in quantized] == [r.token_ids[0] for r in reference]
        assert max(abs(q.logprobs[0] - r.logprobs[0]) for q, r in zip(quantized, reference)) < 0.05


def linears_native(engine: LLMEngine) -> bool:
    """int8 and q8 read their weights through loraserve's native GEMVs where they are built."""
    layer = engine.runner.linears.stored[0]  # type: ignore[union-attr]
    return all(getattr(stored[0], "native", None) is not None for stored in layer.values())


def _one_at_a_time(engine: LLMEngine, prompts: list[str], adapters: list[str | None]) -> list:
    return [engine.generate([p], [a], GREEDY)[0] for p, a in zip(prompts, adapters)]


def _count_kernel_calls(monkeypatch, fmt) -> list[int]:
    """Products through the format's kernel: from Python (``matmul``), or planned for the
    native layer stack (``native_matrix``, once per row count: it runs the same kernel)."""
    calls = [0]
    for method in ("matmul", "native_matrix"):
        original = getattr(fmt, method)

        def counted(self, *args, original=original):
            calls[0] += 1
            return original(self, *args)

        monkeypatch.setattr(fmt, method, counted)
    return calls


@pytest.mark.skipif(not q4_available(CPU), reason="no CPU int4 kernel")
def test_q4_leaves_a_matrix_the_kernel_cannot_take_dense(tmp_path):
    """The tiny model's head has a vocabulary that is not a multiple of 16: it stays in the
    compute dtype (unchanged) and its product goes through the dense path."""
    base = make_tiny_llama(tmp_path / "base")
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, quantize="q4"))
    linears = engine.runner.linears
    assert isinstance(linears, QuantizedLinears)
    vocab = engine.runner.weights.lm_head.shape[0]
    assert (linears.head_stored is None) == (vocab % 16 != 0)
    out = engine.generate(["hello"], [None], GREEDY)[0]
    assert len(out.token_ids) == 12


@pytest.mark.parametrize("kind", list(FORMATS))
def test_quantize_refuses_merged_lora_and_unknown_methods(kind):
    with pytest.raises(ConfigError, match="lora_merge"):
        EngineConfig(model_id="x", quantize=kind, lora_merge=True)
    with pytest.raises(ConfigError, match="awq"):
        EngineConfig(model_id="x", quantize="awq")


@pytest.mark.skipif(not q4_available(CPU), reason="no CPU int4 kernel")
def test_q4_serves_a_q4_1_gguf_file_with_its_own_blocks(tmp_path, monkeypatch):
    """A Q4_1 GGUF file under ``option.quantize=q4``: converted in fp32 (bf16 would round its
    values) and quantized again, every weight the kernel reads is the file's own value."""
    import gguf
    from gguf import quants

    from loraserve.testing.gguf_file import write_gguf

    monkeypatch.setenv("LORASERVE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_llama(tmp_path / "base")
    path = write_gguf(base, tmp_path / "tiny-q4_1.gguf", matrices="Q4_1")
    engine = LLMEngine(EngineConfig(model_id=str(path), dtype="fp32", max_model_len=64, quantize="q4"))
    assert engine.model_path.name.endswith("-float32")
    linears = engine.runner.linears
    assert isinstance(linears, QuantizedLinears)
    reader = gguf.GGUFReader(str(path))
    raw = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert raw.tensor_type == gguf.GGMLQuantizationType.Q4_1
    from_file = torch.from_numpy(quants.dequantize(raw.data, raw.tensor_type).copy())
    stored = linears.stored[0]["down"]
    assert stored is not None
    q_proj = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    heads = engine.runner.args.num_heads
    q_rows = _unpermute(torch.from_numpy(quants.dequantize(q_proj.data, q_proj.tensor_type).copy()), heads)
    weights = engine.runner.weights.layers[0]
    torch.testing.assert_close(weights.down, from_file, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights.qkv[: q_rows.shape[0]], q_rows, rtol=0, atol=1e-6)
    out = engine.generate(["hello world"], [None], GREEDY)[0]
    assert len(out.token_ids) == 12


@pytest.mark.skipif(not (q4_available(CPU) and NATIVE), reason="no CPU int4 kernel or native kernels")
def test_a_gguf_files_q4_1_and_q8_0_matrices_are_served_in_their_own_blocks(tmp_path, monkeypatch):
    """Only what the file holds as Q4_1 or Q8_0 goes on a quantized kernel, each matrix in its
    own format (llama.cpp's mixes keep some at higher precision); a file with neither (Q4_0
    here) is refused, naming what it holds."""
    from loraserve.model.gguf_blocks import block_targets, matrix_types
    from loraserve.testing.gguf_file import write_gguf

    monkeypatch.setenv("LORASERVE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_llama(tmp_path / "base")
    q4_1 = write_gguf(base, tmp_path / "tiny-q4_1.gguf", matrices="Q4_1")
    assert matrix_types(q4_1)[(0, "qkv")] == "Q4_1"
    q8 = write_gguf(base, tmp_path / "tiny-q8_0.gguf", matrices="Q8_0")
    assert set(block_targets(q8, "q4").values()) == {"Q8_0"}  # type: ignore[union-attr]
    engine = LLMEngine(EngineConfig(model_id=str(q8), dtype="fp32", max_model_len=64, quantize="q4"))
    linears = engine.runner.linears
    assert isinstance(linears, QuantizedLinears) and linears.name == Q8Format.name
    import gguf
    from gguf import quants

    raw = next(t for t in gguf.GGUFReader(str(q8)).tensors if t.name == "blk.0.ffn_down.weight")
    from_file = torch.from_numpy(quants.dequantize(raw.data, raw.tensor_type).copy())
    torch.testing.assert_close(engine.runner.weights.layers[0].down, from_file, rtol=0, atol=0)
    q4_0 = write_gguf(base, tmp_path / "tiny-q4_0.gguf", matrices="Q4_0")
    with pytest.raises(ConfigError, match="Q4_0"):
        LLMEngine(EngineConfig(model_id=str(q4_0), dtype="fp32", max_model_len=64, quantize="q8"))


def _unpermute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """The reverse of llama.cpp's q/k row order (``gguf_file._permute``)."""
    rows = weights.shape[0]
    return weights.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weights.shape)


def test_q8_without_the_native_kernels_is_refused_naming_the_kernel(tmp_path):
    """q8 has no torch fallback: where the native kernels are not built (``ops`` without them),
    the model is refused with the kernel's name rather than served some other way."""
    from loraserve.model.loader import load_state_dict
    from loraserve.model.quantized import quantized_linears
    from loraserve.model.weights import ModelWeights

    base = make_tiny_llama(tmp_path / "base")
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64))
    runner = engine.runner
    weights = ModelWeights(runner.args, runner.family.weights, load_state_dict(base), torch.float32, CPU)
    with pytest.raises(ConfigError, match="gemv_q8_0"):
        quantized_linears("q8", weights, torch.float32, CPU, 1, None, ops=None)


def test_w8a8_needs_an_int8_gemm_that_sums_in_int32(monkeypatch):
    """Without VNNI / AMX-INT8, oneDNN's int8 GEMM saturates pair sums in int16: refused there
    (and where oneDNN is capped below VNNI), never served with wrong sums."""
    assert not w8a8_available(CPU, frozenset({"avx2", "fma", "avx512f", "avx512bw"}))
    assert not w8a8_available(torch.device("cuda"), frozenset({"avx512_vnni"}))
    if w8a8_available(CPU):
        assert w8a8_available(CPU, frozenset({"amx_int8"}))
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert not w8a8_available(CPU)
