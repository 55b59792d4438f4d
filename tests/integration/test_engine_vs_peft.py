"""Greedy fp32 generations of the engine equal transformers + PEFT, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

NEW_TOKENS = 12
ADAPTERS = {  # name: (rank, targets, extra)
    "qv4": (4, ["q_proj", "v_proj"], {}),
    "all8": (8, "all-linear", {}),
    "mlp16": (16, ["o_proj", "gate_proj", "down_proj"], {"use_rslora": True}),
}


def reference_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Plain greedy decoding with full forwards: no generate() knobs in the way."""
    ids = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"peft_{request.param}")
    base = make_tiny_llama(root / "base", architecture=request.param)
    paths = {
        name: make_peft_adapter(base, root / name, rank=r, target_modules=t, seed=i, **extra)
        for i, (name, (r, t, extra)) in enumerate(ADAPTERS.items())
    }
    return base, paths


def _references(base: Path, paths: dict[str, Path], prompts: list[list[int]]) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    refs = {None: [reference_greedy(model, p, NEW_TOKENS) for p in prompts]}
    first, *rest = paths
    peft_model = PeftModel.from_pretrained(model, paths[first], adapter_name=first)
    for name in rest:
        peft_model.load_adapter(paths[name], adapter_name=name)
    for name in paths:
        peft_model.set_adapter(name)
        refs[name] = [reference_greedy(peft_model, p, NEW_TOKENS) for p in prompts]
    return refs


def test_mixed_batch_matches_peft_per_adapter(setup):
    base, paths = setup
    engine = LLMEngine(
        EngineConfig(model_id=str(base), dtype="fp32", max_model_len=128, max_loras=4, max_lora_rank=16)
    )
    for name, path in paths.items():
        engine.register_adapter(name, path)
    prompts = [engine.tokenizer.encode(t) for t in ("the quick brown", "hello world", "lora adapters")]
    refs = _references(base, paths, prompts)
    assert len({tuple(refs[n][0]) for n in refs}) == len(refs), "adapters must change the output"
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    names = [None, *paths]
    mixed = [(p, n) for p in range(len(prompts)) for n in names]
    results = engine.generate([prompts[p] for p, _ in mixed], [n for _, n in mixed], params)
    for (p, name), result in zip(mixed, results):
        assert result.token_ids == refs[name][p], f"adapter {name}, prompt {p}"
    alone = engine.generate([prompts[1]], ["all8"], params)[0]
    assert alone.token_ids == refs["all8"][1]


def test_merged_mode_matches_peft(setup):
    base, paths = setup
    engine = LLMEngine(
        EngineConfig(model_id=str(base), dtype="fp32", max_model_len=128, lora_merge=True, max_lora_rank=16)
    )
    original = [t.clone() for t in engine.runner.weights.layers[0].tensors()]
    for name, path in paths.items():
        engine.register_adapter(name, path)
    prompts = [engine.tokenizer.encode("the quick brown")]
    refs = _references(base, paths, prompts)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    names = ["qv4", None, "all8", "mlp16", "qv4"]
    results = engine.generate(prompts * len(names), names, params)
    for name, result in zip(names, results):
        assert result.token_ids == refs[name][0], name
    engine.runner.merged.unmerge()
    restored = [t for t in engine.runner.weights.layers[0].tensors()]
    assert all(torch.equal(a, b) for a, b in zip(original, restored)), "unmerge must be exact"
