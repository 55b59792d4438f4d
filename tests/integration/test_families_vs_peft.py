"""Every model family the built-in engine serves, against transformers + PEFT on a tiny random
model with the family's features switched on: greedy tokens equal and log-probabilities within
1e-3 (fp32), in one mixed batch of base rows, a LoRA and a DoRA adapter, on the native and the PyTorch ops and
merged, with prompts longer than the sliding window and than a prefill chunk, and again from
the prefix cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.engine.step_batch import build_step_batch
from loraserve.model import runner as runner_module
from loraserve.model.layer_ops import TorchOps
from loraserve.testing.families import FAMILY_CONFIGS, ORIGINAL_CONTEXT, WINDOW, make_tiny_family
from loraserve.testing.reference import cached_greedy, engine_with_adapters, last_logits
from loraserve.testing.tiny import make_peft_adapter

pytestmark = pytest.mark.slow
NEW_TOKENS = 10
CHUNK = 16  # max_num_batched_tokens: the long prompts are prefilled in several chunks
# short; longer than the window and a chunk; longer than LongRoPE's original context; one that
# crosses it while decoding
PROMPT_LENGTHS = (5, 27, ORIGINAL_CONTEXT + 9, ORIGINAL_CONTEXT - 4)


@pytest.fixture(scope="module", params=list(FAMILY_CONFIGS))
def family(request, tmp_path_factory):
    """(base, adapters, prompts, references) for one family."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp(request.param)
    base = make_tiny_family(root / "base", request.param)
    adapters = {
        "all8": make_peft_adapter(base, root / "all8", rank=8, target_modules="all-linear", seed=1),
        "all4": make_peft_adapter(  # DoRA: its row scales meet every family's biases and fusions
            base, root / "all4", rank=4, target_modules="all-linear", seed=5, use_rslora=True, use_dora=True
        ),
    }
    rng = random.Random(7)
    vocab = AutoModelForCausalLM.from_pretrained(base).config.vocab_size
    prompts = [[rng.randrange(2, vocab - 2) for _ in range(n)] for n in PROMPT_LENGTHS]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    refs = {None: [cached_greedy(model, p, NEW_TOKENS) for p in prompts]}
    logits = {None: last_logits(model, prompts[1])}
    peft_model = PeftModel.from_pretrained(model, adapters["all8"], adapter_name="all8")
    peft_model.load_adapter(adapters["all4"], adapter_name="all4")
    for name in adapters:
        peft_model.set_adapter(name)
        refs[name] = [cached_greedy(peft_model, p, NEW_TOKENS) for p in prompts]
        logits[name] = last_logits(peft_model, prompts[1])
    names = list(logits)
    for i, first in enumerate(names):  # each adapter changes the model (its logits, at least)
        assert all(float((logits[first] - logits[other]).abs().max()) > 0.05 for other in names[i + 1 :])
    return request.param, base, adapters, prompts, refs, logits


def _engine(base: Path, adapters: dict[str, Path], **options) -> LLMEngine:
    return engine_with_adapters(
        base,
        adapters,
        max_loras=4,
        max_lora_rank=8,
        max_rolling_batch_size=16,
        max_num_batched_tokens=CHUNK,
        block_size=8,
        **options,
    )


def _check(engine: LLMEngine, prompts: list[list[int]], refs: dict, names: list[str | None]) -> None:
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True)
    rows = [(p, name) for p in range(len(prompts)) for name in names]
    results = engine.generate([prompts[p] for p, _ in rows], [n for _, n in rows], params)
    for (p, name), result in zip(rows, results):
        tokens, logprobs = refs[name][p]
        assert result.token_ids == tokens, f"adapter {name}, prompt of {len(prompts[p])} tokens"
        assert max(abs(a - b) for a, b in zip(result.logprobs, logprobs)) < 1e-3, (name, len(prompts[p]))


@pytest.mark.parametrize("ops", ["native", "torch"])
def test_mixed_batch_unmerged(family, ops, monkeypatch):
    _, base, adapters, prompts, refs, _ = family
    if ops == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = _engine(base, adapters)
    _check(engine, prompts, refs, [None, "all8", "all4"])
    before = engine.stats()["prefix_cache_hit_tokens"]
    _check(engine, prompts[1:3], {n: r[1:3] for n, r in refs.items()}, ["all4", None])  # from the cache
    assert engine.stats()["prefix_cache_hit_tokens"] > before + WINDOW, "the second pass must hit the cache"


def test_merged(family):
    _, base, adapters, prompts, refs, _ = family
    engine = _engine(base, adapters, lora_merge=True)
    _check(engine, prompts, refs, ["all8", None, "all4"])


@pytest.mark.parametrize("ops", ["native", "torch"])
def test_logits_of_a_mixed_prefill(family, ops, monkeypatch):
    """The whole vocabulary's logits after a prompt longer than the window, base and adapter rows
    in one step, within 1e-3 of transformers + PEFT."""
    _, base, adapters, prompts, _, logits = family
    if ops == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=128, max_lora_rank=8))
    for name, path in adapters.items():
        engine.register_adapter(name, path)
    names = [None, "all8", "all4"]
    for name in names:
        engine.add_request(prompts[1], name, SamplingParams(max_new_tokens=1))
    batch = build_step_batch(engine.scheduler.schedule(), engine.runner, merged=False)
    out = engine.runner.forward(batch)
    for row, name in enumerate(names):
        assert float((out[row] - logits[name]).abs().max()) < 1e-3, name


def test_bf16_native_is_as_close_to_fp32_as_torch(family, monkeypatch):
    """In bf16 the native kernels (window, logit cap, partial rotary) stay as close to the fp32
    transformers + PEFT logits as the PyTorch ops do (both round; the kernels keep attention in
    fp32), for a mixed prefill longer than the window."""
    _, base, adapters, prompts, _, logits = family

    def prefill_logits() -> torch.Tensor:
        engine = LLMEngine(EngineConfig(model_id=str(base), dtype="bf16", max_model_len=128, max_lora_rank=8))
        for name, path in adapters.items():
            engine.register_adapter(name, path)
        for name in (None, "all8"):
            engine.add_request(prompts[1], name, SamplingParams(max_new_tokens=1))
        return engine.runner.forward(
            build_step_batch(engine.scheduler.schedule(), engine.runner, merged=False)
        )

    want = torch.stack([logits[None], logits["all8"]])
    native_error = float((prefill_logits() - want).abs().max())
    monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    torch_error = float((prefill_logits() - want).abs().max())
    print(f"bf16 max |logit error|: native {native_error:.3f}, torch {torch_error:.3f}")
    assert native_error <= 1.5 * torch_error + 0.02 * float(want.abs().max())
