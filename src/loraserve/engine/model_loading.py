"""What an engine serves: the checkpoint ``option.model_id`` names (a directory, or a GGUF file
converted once), its tokenizer and the model runner built for this machine. Kept apart from the
engine, which only schedules and steps what this returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraserve.engine.config import EngineConfig
from loraserve.model.families import load_model_config
from loraserve.model.gguf_blocks import block_targets
from loraserve.model.loader import model_source, parse_dtype, resolve_model_path
from loraserve.model.runner import ModelRunner

log = logging.getLogger("loraserve.engine")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    path: Path  # the checkpoint directory (a GGUF file's converted copy)
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    runner: ModelRunner
    # what an adapter's base_model_name_or_path is compared with (a warning where none fits)
    base_names: list[str]


def load_model(config: EngineConfig, model_dir: Path | None = None) -> LoadedModel:
    """Refuses an unsupported model from its config before any weight is read."""
    from transformers import AutoTokenizer

    device = pick_device(config.device)
    dtype = parse_dtype(config.dtype, device.type)
    source = model_source(config.model_id, model_dir)
    path = resolve_model_path(source, requantize=bool(config.quantize))
    model_config = load_model_config(path)
    base_names = [path.name, str(config.model_id), str(getattr(model_config[2], "_name_or_path", ""))]
    tokenizer = AutoTokenizer.from_pretrained(path)
    runner = ModelRunner(
        path,
        dtype,
        device,
        config.max_rolling_batch_size,
        config.max_model_len,
        config.max_loras,
        config.max_lora_rank,
        model_config,
        quantize=config.quantize,
        file_blocks=block_targets(source, config.quantize) if config.quantize in ("q4", "q8") else None,
    )
    log.info("engine hardware choice: %s", runner.info())
    return LoadedModel(path, device, dtype, tokenizer, runner, base_names)
