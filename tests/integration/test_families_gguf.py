"""Every family whose GGUF files transformers can read loads from a ``.gguf`` file, as SmolLM2
does, and generates what transformers generates from that same file (greedy, fp32)."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.families import make_tiny_family
from loraserve.testing.gguf_file import write_gguf

pytestmark = pytest.mark.slow
# transformers' GGUF reader knows no Mistral architecture (Mistral GGUFs are written as "llama")
# and takes Qwen3's head_dim from its default; features GGUF metadata cannot carry stay off.
CASES = {
    "llama2-dynamic": {},
    "qwen2": {},
    "qwen3": {"head_dim": 128, "attention_bias": False},
    "phi3": {},
    "gemma2": {},
    "gemma3": {},
}


@pytest.mark.parametrize("family", list(CASES))
def test_family_served_from_gguf(tmp_path, monkeypatch, family):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LORASERVE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_family(tmp_path / "hf", family, **CASES[family])
    gguf_path = write_gguf(base, tmp_path / f"{family}.gguf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    prompt = list(range(5, 25))
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8
        )[0, len(prompt) :].tolist()
    engine = LLMEngine(EngineConfig(model_id=str(gguf_path), dtype="fp32", max_model_len=64))
    result = engine.generate([prompt], [None], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    assert result.token_ids == expected
