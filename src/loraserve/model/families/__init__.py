"""The registry: a checkpoint's ``architectures`` → its family, and the family's reading of the
config into ``ModelArgs`` (vLLM's model registry is the model; each family is one small file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraserve.errors import ConfigError
from loraserve.model.args import ModelArgs
from loraserve.model.families.base import ROPE_TYPES, Family, rope_types
from loraserve.model.families.gemma import GEMMA2, GEMMA3
from loraserve.model.families.llama import LLAMA, MISTRAL
from loraserve.model.families.phi3 import PHI3
from loraserve.model.families.qwen import QWEN2, QWEN3

FAMILIES: tuple[Family, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)
BY_ARCHITECTURE = {arch: family for family in FAMILIES for arch in family.architectures}
SUPPORTED_ARCHITECTURES = tuple(BY_ARCHITECTURE)


def read_raw_config(model_path: Path) -> dict[str, Any]:
    try:
        return json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {model_path / 'config.json'}: {exc}") from None


def family_of(raw: dict[str, Any]) -> Family:
    """The family serving these ``architectures``, or a refusal that lists what is supported."""
    archs = raw.get("architectures") or [raw.get("model_type", "?")]
    for arch in archs:
        if arch in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[arch]
    raise ConfigError(
        f"architecture {archs[0]} is not supported by the built-in engine; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def load_model_config(model_path: Path) -> tuple[Family, ModelArgs, Any]:
    """(family, args, transformers config) of a model directory; refuses before any weight is read."""
    from transformers import AutoConfig

    raw = read_raw_config(model_path)
    family = family_of(raw)
    family.check_fields(raw)
    try:
        config = AutoConfig.from_pretrained(model_path)
    except Exception as exc:  # transformers' own validation: a malformed or inconsistent config
        raise ConfigError(f"config.json of {model_path} is not valid for {family.name}: {exc}") from None
    for kind in rope_types(config):
        if kind not in ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling type {kind!r} is not supported by the built-in engine "
                f"(supported: {', '.join(ROPE_TYPES)})"
            )
    return family, family.to_args(config, raw), config
