"""DJL/LMI settings the built-in engine does not use are named in one warning at load, and
fp16 on a CPU (the slow path) is called out, instead of passing without a word."""

from __future__ import annotations

import logging

from loraserve.engine import EngineConfig
from loraserve.handlers import builtin_llm


def test_settings_the_engine_ignores_are_named_once(caplog):
    properties = {
        "model_id": "/m",
        "max_loras": "2",
        "rolling_batch": "vllm",
        "tensor_parallel_degree": "1",
        "model_dir": "/m",
        "engine": "Python",
        "batch_size": "1",
    }
    with caplog.at_level(logging.WARNING, logger="loraserve.engine"):
        builtin_llm._warn_unused(properties, EngineConfig(model_id="/m"))
    (record,) = caplog.records
    assert "rolling_batch, tensor_parallel_degree" in record.getMessage()
    assert "max_loras" not in record.getMessage()


def test_fp16_on_a_cpu_is_called_out(caplog):
    with caplog.at_level(logging.WARNING, logger="loraserve.engine"):
        builtin_llm._warn_unused({"model_id": "/m"}, EngineConfig(model_id="/m", dtype="fp16"))
    assert "fp16" in caplog.text and "slow" in caplog.text
