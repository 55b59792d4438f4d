"""Which fields of PEFT's ``LoraConfig`` the engine serves, as an allow-list: every field is
either implemented, known to matter only while training, or refused at registration with its
name (and, where PEFT has one, the conversion that makes the adapter servable). A field a newer
PEFT adds is refused until it is listed here, never silently ignored."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

# PEFT's default when ``lora_alpha`` is absent (LoraConfig.lora_alpha = 8), not the rank.
DEFAULT_ALPHA = 8
# Inits that change the base weights: an adapter saved without PEFT's conversion needs a base
# model nobody serves.
CONVERT = (
    "save it with PEFT's path_initial_model_for_weight_conversion (or convert it with "
    "PeftModel.save_pretrained(..., path_initial_model_for_weight_conversion=...)), which turns it "
    "into a plain LoRA adapter of the original base model"
)
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "astra")

Check = Callable[[Any], str | None]  # a value → why it is refused, or None


def _falsy(value: Any) -> str | None:
    return None if not value else "is not supported by the built-in engine"


def _init(value: Any) -> str | None:
    if isinstance(value, str) and value.lower().startswith(BASE_CHANGING_INITS):
        return f"= {value!r} changes the base weights at initialisation; {CONVERT}"
    return None


def _fan_in_fan_out(value: Any) -> str | None:
    return None if not value else "= true (Conv1D-style weights) does not apply to the served models"


def _invocation(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    ):
        return f"= {value!r} must be a non-empty list of token ids"
    return None


def _names(value: Any) -> str | None:
    """Module names as PEFT takes them: a string (a regex), a list of strings, or none."""
    if (
        value is None
        or isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    ):
        return None
    return f"= {value!r} must be a string or a list of strings"


def _layers(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return None
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return None
    return f"= {value!r} must be a layer index or a list of them"


def _pattern(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return "must map module name patterns to numbers"
    bad = [
        k
        for k, v in value.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
    ]
    return f"holds non-numeric values for {bad}" if bad else None


BDLORA_FIELDS = {"target_modules_bd_a", "target_modules_bd_b", "nblocks", "match_strict"}


def _bdlora(value: Any) -> str | None:
    if not value:
        return None
    if not isinstance(value, dict) or set(value) - BDLORA_FIELDS:
        return f"= {value!r}: BdLoraConfig fields are {sorted(BDLORA_FIELDS)}"
    nblocks = value.get("nblocks", 1)
    if isinstance(nblocks, bool) or not isinstance(nblocks, int) or nblocks < 1:
        return f"nblocks must be a positive integer, got {nblocks!r}"
    for key in ("target_modules_bd_a", "target_modules_bd_b"):
        patterns = value.get(key) or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            return f"{key} must be a list of module name patterns"
    return None


FIELDS: dict[str, Check | None] = {
    # metadata, or only meaningful while training: the saved tensors say everything
    "task_type": None,
    "peft_type": None,
    "auto_mapping": None,
    "peft_version": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": None,
    "lora_dropout": None,
    "target_modules": _names,
    "exclude_modules": _names,
    "layers_to_transform": _layers,
    "layers_pattern": None,
    "target_parameters": None,
    "runtime_config": None,
    "loftq_config": None,
    "eva_config": None,
    "corda_config": None,
    "astra_config": None,  # PEFT 0.22: ASTRA's init (refused through init_lora_weights="astra")
    "lora_ga_config": None,
    "qalora_group_size": None,
    "ensure_weight_tying": None,
    # implemented
    "r": None,
    "lora_alpha": None,
    "use_rslora": None,
    "rank_pattern": _pattern,
    "alpha_pattern": _pattern,
    "init_lora_weights": _init,
    "bias": None,  # trained biases: model/bias_adapter.py
    "fan_in_fan_out": _fan_in_fan_out,
    "use_dora": None,  # DoRA: model/dora.py
    "modules_to_save": lambda value: (
        None
        if not value or (isinstance(value, list) and set(value) <= {"lm_head", "embed_tokens"})
        else f"= {value!r}: only lm_head and embed_tokens are served"
    ),
    "trainable_token_indices": None,  # model/vocab_adapter.py checks it against the file
    "alora_invocation_tokens": _invocation,  # activated LoRA: engine/activation.py
    "use_bdlora": _bdlora,  # block-diagonal factors, expanded at load: model/peft_adapter.py
    # refused while set
    "use_qalora": _falsy,
    "layer_replication": _falsy,
    "lora_bias": _falsy,
    "megatron_config": _falsy,
    "megatron_core": None,
    "velora_config": _falsy,
    "monteclora_config": _falsy,
    "arrow_config": _falsy,
    "kasa_config": _falsy,
}


def config_problem(config: dict[str, Any]) -> str | None:
    """Why this adapter_config.json cannot be served exactly, naming the field; None if it can."""
    for key, value in config.items():
        if key not in FIELDS:
            return (
                f"adapter_config.json field {key!r} is not known to the built-in engine "
                "(refused rather than ignored)"
            )
        check = FIELDS[key]
        reason = check(value) if check is not None else None
        if reason:
            return f"adapter_config.json field {key!r} {reason}"
    return None


def pattern_value(pattern: dict[str, Any], module_key: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the
    module's name (``model.layers.0.self_attn.q_proj``) at a dot boundary."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module_key):
            return pattern[key]
    return default


def base_model_mismatch(config: dict[str, Any], served_names: list[str]) -> str | None:
    """Why an adapter may not belong to this model, or None. ``base_model_name_or_path`` is
    metadata PEFT itself ignores (it loads any adapter whose shapes fit, and shapes that do
    not fit are refused elsewhere), so a different name is a warning, never a refusal. Names
    are compared by their last path segment, letters and digits only, either containing the
    other (``SmolLM2-135M-Instruct`` fits a ``SmolLM2-135M-Instruct.Q4_1-…`` conversion)."""
    declared = config.get("base_model_name_or_path")
    if not isinstance(declared, str) or not _stem(declared):
        return None
    wanted = _stem(declared)
    if any(wanted in _stem(name) or _stem(name) in wanted for name in served_names if _stem(name)):
        return None
    return (
        f"adapter_config.json says it was trained on {declared!r}, and this model is "
        f"{', '.join(repr(n) for n in served_names if n)}; its shapes fit, so it is served "
        "(as PEFT would load it), but its answers may be meaningless on this base"
    )


def _stem(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.rstrip("/").rsplit("/", 1)[-1].lower())
