"""Loading a family's checkpoint: a tensor its config does not account for is refused, not
dropped (the bug class of a Llama ``o_proj`` bias silently ignored)."""

from __future__ import annotations

import json

import pytest

from loraserve.engine import EngineConfig, LLMEngine
from loraserve.errors import ConfigError
from loraserve.testing.families import make_tiny_family


def test_checkpoint_tensor_the_config_does_not_use_is_refused(tmp_path):
    base = make_tiny_family(tmp_path / "llama", "llama3", layers=1)  # saved with q/k/v/o and MLP biases
    config = json.loads((base / "config.json").read_text())
    config["attention_bias"] = False
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"does not use .*self_attn\.\w_proj\.bias"):
        LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64))


def test_engine_reports_its_family(tmp_path):
    base = make_tiny_family(tmp_path / "phi3", "phi3", layers=1)
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64))
    assert engine.runner.info()["family"] == "Phi3"
    assert engine.runner.args.lora_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
