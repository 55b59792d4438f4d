"""An adapter trained on another base: shapes that do not fit are refused (PEFT would fail
too); a different ``base_model_name_or_path`` with fitting shapes is served with a warning
naming both models (PEFT loads it: the field is metadata)."""

from __future__ import annotations

import json
import logging

import pytest

from loraserve.engine import EngineConfig, LLMEngine
from loraserve.errors import LoraserveError
from loraserve.model.peft_config import base_model_mismatch
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama


@pytest.mark.parametrize(
    ("declared", "served", "fits"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", ["SmolLM2-135M-Instruct.Q4_1-b62f60b7"], True),
        ("/models/qwen2.5-0.5b/", ["Qwen2.5-0.5B"], True),
        (None, ["anything"], True),
        ("", ["anything"], True),
        ("meta-llama/Llama-3.1-8B", ["SmolLM2-135M-Instruct", "/store/smollm2"], False),
    ],
)
def test_the_declared_base_is_compared_by_its_last_segment(declared, served, fits):
    warning = base_model_mismatch({"base_model_name_or_path": declared}, served)
    assert (warning is None) is fits
    if not fits:
        assert "Llama-3.1-8B" in warning and "SmolLM2-135M-Instruct" in warning


def test_an_adapter_for_another_base_is_refused_or_served_with_a_warning(tmp_path, caplog):
    base = make_tiny_llama(tmp_path / "base")
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=8))
    other = make_tiny_llama(tmp_path / "wider", hidden=96)
    with pytest.raises(LoraserveError, match="shapes"):
        engine.register_adapter("wide", make_peft_adapter(other, tmp_path / "wide", rank=4))
    assert "wide" not in engine.adapters.tiers()

    named = make_peft_adapter(base, tmp_path / "named", rank=4)
    config = json.loads((named / "adapter_config.json").read_text())
    (named / "adapter_config.json").write_text(
        json.dumps(config | {"base_model_name_or_path": "meta-llama/Llama-3.1-8B"})
    )
    with caplog.at_level(logging.WARNING, logger="loraserve.engine"):
        engine.register_adapter("named", named)
    assert "named" in engine.adapters.tiers()
    assert any("meta-llama/Llama-3.1-8B" in r.getMessage() for r in caplog.records)
