"""Engine settings, parsed once from ``serving.properties`` options (LMI's names)."""

from __future__ import annotations

from dataclasses import dataclass

from loraserve.config import parse_bool, parse_int
from loraserve.engine.kv_budget import parse_memory
from loraserve.errors import ConfigError


@dataclass(slots=True)
class EngineConfig:
    model_id: str
    dtype: str = "auto"
    device: str = "auto"
    max_rolling_batch_size: int = 32
    max_model_len: int = 0  # 0: the model's own context length
    max_num_batched_tokens: int = 2048  # tokens per step; longer prompts are prefilled in chunks
    kv_cache_memory: str = "auto"  # see kv_budget
    block_size: int = 16  # tokens per KV-cache block
    enable_prefix_caching: bool = True
    enable_lora: bool = True
    max_loras: int = 32
    max_lora_rank: int = 64
    max_cpu_loras: int = 256
    max_cpu_lora_memory: str = ""  # e.g. "2GiB": a byte budget for adapters in memory; "": none
    lora_merge: bool = False
    max_adapters_per_request: int = 4  # adapters one request may mix (engine/mixtures.py)
    threads: int = 0
    quantize: str = ""  # "int8" | "q4" | "q8" weight-only, "w8a8": quantized base on CPU (model/quantized.py)

    def __post_init__(self) -> None:
        self.quantize = self.quantize.strip().lower()
        if self.quantize == "none":
            self.quantize = ""
        if self.quantize not in ("", "int8", "q4", "q8", "w8a8"):
            raise ConfigError(
                f"option.quantize={self.quantize} is not supported: the built-in engine quantizes "
                "to int8, q4 or q8 (weight-only) or w8a8 (int8 weights and activations), on CPU; "
                "or leave it unset"
            )
        if self.quantize and self.lora_merge:
            raise ConfigError(
                f"option.quantize={self.quantize} with option.lora_merge=true: merging would edit "
                "the quantized weights; they serve LoRA unmerged (leave lora_merge unset)"
            )
        if self.max_cpu_loras < self.max_loras:
            self.max_cpu_loras = self.max_loras
        if self.max_num_batched_tokens < self.max_rolling_batch_size:
            raise ConfigError(
                f"option.max_num_batched_tokens={self.max_num_batched_tokens} must be at least "
                f"option.max_rolling_batch_size={self.max_rolling_batch_size}: every running "
                "request decodes one token per step"
            )
        if self.kv_cache_memory.strip().lower() != "auto":
            parse_memory(self.kv_cache_memory)  # a bad value fails at start-up, saying how to fix it
        adapter_budget(self.max_cpu_lora_memory)
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"option.device={self.device} must be auto, cpu or cuda[:N]")

    @property
    def cpu_lora_bytes(self) -> int | None:
        return adapter_budget(self.max_cpu_lora_memory)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> EngineConfig:
        if "model_id" not in options:
            raise ConfigError("option.model_id is required for the built-in engine")
        ints = (
            "max_rolling_batch_size",
            "max_model_len",
            "max_num_batched_tokens",
            "max_loras",
            "max_lora_rank",
            "max_cpu_loras",
            "threads",
            "block_size",
            "max_adapters_per_request",
        )
        kwargs: dict[str, object] = {
            k: parse_int(options[k], f"option.{k}", 0 if k == "threads" else 1) for k in ints if k in options
        }
        for key in ("enable_lora", "lora_merge", "enable_prefix_caching"):
            if key in options:
                kwargs[key] = parse_bool(options[key], f"option.{key}")
        for key in ("dtype", "device", "kv_cache_memory", "max_cpu_lora_memory", "quantize"):
            if key in options:
                kwargs[key] = str(options[key])
        return cls(model_id=options["model_id"], **kwargs)  # type: ignore[arg-type]


def adapter_budget(value: str) -> int | None:
    """option.max_cpu_lora_memory in bytes (a size such as 2GiB); None when unset."""
    if not value.strip():
        return None
    size = parse_memory(value.strip(), "option.max_cpu_lora_memory")
    if size < 0:
        raise ConfigError(f"option.max_cpu_lora_memory={value!r}: give a size such as 512MiB or 2GiB")
    return int(size)
