"""DJL's ``option.enable_lora`` gate: a model takes adapters only when its properties say so.

DJL refuses every adapter route of a model without ``option.enable_lora=true`` ("LoRA is not
enabled.", 400) and skips its ``adapters/`` folder at start-up. loraserve's built-in engine is
LoRA-first, so there the flag defaults to true; ``option.enable_lora=false`` still turns it off.
"""

from __future__ import annotations

from loraserve.config import ConfigError, parse_bool
from loraserve.errors import BadRequestError


def lora_enabled(options: dict[str, str], builtin_engine: bool) -> bool:
    try:
        return parse_bool(options.get("enable_lora", builtin_engine), "option.enable_lora")
    except ConfigError:
        return False


def require_lora(model_name: str, options: dict[str, str], builtin_engine: bool) -> None:
    if not lora_enabled(options, builtin_engine):
        raise BadRequestError(
            f"LoRA is not enabled. Set option.enable_lora=true in the "
            f"serving.properties of model {model_name} to use adapters."
        )
