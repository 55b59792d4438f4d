"""Weight-only int8 base weights (``option.quantize=int8``) against the dequantized model (the
same engine with its base products done by ``F.linear`` on the dequantized weights), with and
without an unmerged LoRA adapter: in fp32 every greedy token equal and log-probs within 1e-4;
in bf16 the first token equal and its log-prob within 0.05 (bf16 rounding of the products; two
bf16 GEMMs break a near-tie of a random model differently later on); merged LoRA refused. The
quantization error itself (int8 against the original weights) is at most half a step per
weight, checked on the weights."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.errors import ConfigError
from loraserve.model import int8
from loraserve.model.int8 import int8_available, quantize_rows
from loraserve.model.packed import Linears
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

pytestmark = pytest.mark.skipif(not int8_available(torch.device("cpu")), reason="no CPU int8 kernel")
GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)


def test_rows_quantize_within_half_a_step():
    weight = torch.randn(64, 48) * torch.linspace(0.01, 3, 64)[:, None]  # rows of very different scale
    q, scales = quantize_rows(weight)
    assert q.dtype is torch.int8 and q.abs().max() <= 127
    error = (q.float() * scales[:, None] - weight).abs()
    assert bool((error <= scales[:, None] / 2 + 1e-6).all())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_int8_tokens_equal_the_dequantized_model(tmp_path, dtype, monkeypatch):
    if dtype == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 on this CPU")
    base = make_tiny_llama(tmp_path / "base")
    adapter = make_peft_adapter(base, tmp_path / "qv", rank=4)
    config = EngineConfig(model_id=str(base), dtype=dtype, max_model_len=64, max_lora_rank=8, quantize="int8")
    engine = LLMEngine(config)
    engine.register_adapter("qv", adapter)
    assert engine.runner.info()["linear"] == "int8-weight-only"
    prompts = ["hello world", "the quick brown fox", "one two three four"]
    adapters = [None, "qv", "qv"]
    calls = _count_int8_calls(monkeypatch)
    quantized = _one_at_a_time(engine, prompts, adapters)  # a single stream decodes on int8
    assert calls[0] > 0

    runner = engine.runner  # the reference: the dequantized weights through F.linear
    int8_ops = runner.decoder.linears
    runner.decoder.linears = runner.linears = Linears(runner.weights, 1, enabled=False)
    reference = _one_at_a_time(engine, prompts, adapters)
    runner.decoder.linears = runner.linears = int8_ops
    if dtype == "fp32":  # only the accumulation order differs: every greedy token is the same
        assert [r.token_ids for r in quantized] == [r.token_ids for r in reference]
        gap = max(abs(a - b) for q, r in zip(quantized, reference) for a, b in zip(q.logprobs, r.logprobs))
        assert gap < 1e-4
    else:  # two bf16 GEMMs round differently: a near-tie of this random model may break later
        assert [r.token_ids[0] for r in quantized] == [r.token_ids[0] for r in reference]
        assert max(abs(q.logprobs[0] - r.logprobs[0]) for q, r in zip(quantized, reference)) < 0.05


def _one_at_a_time(engine: LLMEngine, prompts: list[str], adapters: list[str | None]) -> list:
    return [engine.generate([p], [a], GREEDY)[0] for p, a in zip(prompts, adapters)]


def _count_int8_calls(monkeypatch) -> list[int]:
    calls, original = [0], int8._int8_mm

    def counted(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(int8, "_int8_mm", counted)
    return calls


def test_int8_refuses_merged_lora_and_unknown_methods():
    with pytest.raises(ConfigError, match="lora_merge"):
        EngineConfig(model_id="x", quantize="int8", lora_merge=True)
    with pytest.raises(ConfigError, match="awq"):
        EngineConfig(model_id="x", quantize="awq")
