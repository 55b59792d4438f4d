"""The LLM engine: continuous batching with many LoRA adapters in one batch. No HTTP here."""

from loraserve.engine.config import EngineConfig
from loraserve.engine.engine import LLMEngine
from loraserve.wire.sampling import SamplingParams

__all__ = ["EngineConfig", "LLMEngine", "SamplingParams"]
