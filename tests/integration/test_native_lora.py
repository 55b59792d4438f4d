"""The native BGMV kernel (bf16) agrees with the PyTorch LoRA path on the same batch."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine
from loraserve.engine.step_batch import build_step_batch
from loraserve.model import lora
from loraserve.model.bgmv_native import native_bgmv
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

pytestmark = pytest.mark.integration


@pytest.mark.skipif(native_bgmv() is None, reason="the native kernel could not be compiled here")
def test_native_kernel_matches_pytorch_path(tmp_path, monkeypatch):
    base = make_tiny_llama(tmp_path / "base")
    adapters = [make_peft_adapter(base, tmp_path / "qv", rank=4),
                make_peft_adapter(base, tmp_path / "all", rank=8, target_modules="all-linear", seed=3)]

    def first_logits() -> torch.Tensor:
        engine = LLMEngine(EngineConfig(model_id=str(base), dtype="bf16", max_model_len=64,
                                        max_lora_rank=8))
        for i, path in enumerate(adapters):
            engine.register_adapter(f"a{i}", path)
        seqs = [engine.add_request("the quick brown", name) for name in (None, "a0", "a1", "a1")]
        decodes, prefills = engine.scheduler.schedule()
        batch = build_step_batch(decodes, prefills, engine.runner, merged=False)
        return engine.runner.forward(batch), seqs

    native, _ = first_logits()
    monkeypatch.setattr(lora, "native_bgmv", lambda: None)
    reference, _ = first_logits()
    assert native.shape == reference.shape
    assert torch.allclose(native, reference, atol=0.05 * float(reference.abs().max()))
    assert not torch.allclose(reference[0], reference[2])  # the adapters do change the logits
