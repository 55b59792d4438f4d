"""Read and check a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

Everything the engine cannot apply faithfully is refused here, at registration, with an error
that names it: a ``LoraConfig`` field it does not implement (``peft_config``), embedding/lm_head
LoRA, ranks above ``max_lora_rank``, shapes that do not fit the base model, a module named twice,
or no matching module. Ranks and alphas are per module (``rank_pattern`` / ``alpha_pattern``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraserve.errors import BadRequestError
from loraserve.model.args import ModelArgs
from loraserve.model.bias_adapter import bias_problem
from loraserve.model.peft_config import DEFAULT_ALPHA, config_problem, pattern_value
from loraserve.model.vocab_adapter import VocabParts, read_vocab_parts

KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
BIAS = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.(?:base_layer\.)?bias$")
MAGNITUDE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_magnitude_vector(?:\.weight)?$")
PREFIX = "base_model.model."  # PEFT's prefix of the saved keys: the rest names the model's module


class AdapterFormatError(BadRequestError):
    error_type = "AdapterFormatException"


@dataclass(slots=True)
class LoraWeights:
    """One adapter in memory: per (layer, module), A (r, in) and B (out, r) and its scaling
    (alpha / r, or alpha / sqrt(r) with rsLoRA, per module); ``rank`` is the largest r."""

    rank: int
    scalings: dict[tuple[int, str], float]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    magnitudes: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # DoRA: m (out,) fp32
    vocab: VocabParts | None = None  # its own embed_tokens / lm_head, or LoRA on them
    biases: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # trained biases (out,)
    invocation: tuple[int, ...] | None = None  # activated LoRA: applies from these tokens on
    # the LoRA backend's install-ready copy (``LoraBackend.prepare``), built off the engine thread
    slot_image: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    @property
    def modules(self) -> set[str]:
        return {module for _, module in self.weights}

    def nbytes(self) -> int:
        return (
            sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.weights.values())
            + sum(m.numel() * m.element_size() for m in self.magnitudes.values())
            + (self.vocab.nbytes() if self.vocab is not None else 0)
            + sum(t.numel() * t.element_size() for t in self.biases.values())
            + sum(t.numel() * t.element_size() for image in (self.slot_image or {}).values() for t in image)
        )


def _refuse(path: Path, message: str) -> AdapterFormatError:
    return AdapterFormatError(f"adapter at {path}: {message}")


def read_adapter_config(path: Path, modules: tuple[str, ...] = ()) -> dict:
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise _refuse(path, "no adapter_config.json (a PEFT LoRA adapter directory is expected)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise _refuse(path, f"adapter_config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise _refuse(path, f"adapter_config.json must be a JSON object, got {type(config).__name__}")
    if config.get("peft_type", "LORA") != "LORA":
        raise _refuse(path, f"peft_type {config.get('peft_type')} is not supported (only LORA)")
    problem = config_problem(config)
    if problem:
        raise _refuse(path, problem)
    return config


def _number(path: Path, name: str, value: object, module: str, positive_int: bool = False) -> None:
    if positive_int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _refuse(
            path, f"adapter_config.json: {name} must be a positive integer, got {value!r} ({module})"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(path, f"adapter_config.json: {name} must be a finite number, got {value!r} ({module})")


def _rank_and_scaling(path: Path, config: dict, module_key: str, max_rank: int) -> tuple[int, float]:
    """(r, scaling) of one module, as PEFT computes them: rank_pattern / alpha_pattern first, then
    r and lora_alpha (default 8), each value checked (``r: 0`` once divided by zero)."""
    rank = pattern_value(config.get("rank_pattern") or {}, module_key, config.get("r", 8))
    default_alpha = config.get("lora_alpha", DEFAULT_ALPHA)
    alpha = pattern_value(config.get("alpha_pattern") or {}, module_key, default_alpha)
    rslora = config.get("use_rslora", False)
    _number(path, "r", rank, module_key, positive_int=True)
    if rank > max_rank:
        raise _refuse(path, f"rank {rank} ({module_key}) exceeds option.max_lora_rank={max_rank}")
    _number(path, "lora_alpha", alpha, module_key)
    if not isinstance(rslora, bool):
        raise _refuse(path, f"adapter_config.json: use_rslora must be true or false, got {rslora!r}")
    return rank, alpha / math.sqrt(rank) if rslora else alpha / rank


def _finite(path: Path, key: str, tensor: torch.Tensor) -> None:
    """NaN/inf weights would poison every token of the adapter's requests (and, sampled,
    their batch): refused here, checked in the serving dtype so overflow counts too. One tensor
    through ``_all_finite``'s check (DoRA magnitudes, trained biases)."""
    _all_finite(path, [(key, tensor, 1.0)], tensor.dtype)


def _all_finite(path: Path, factors: list[tuple[str, torch.Tensor, float]], dtype: torch.dtype) -> None:
    """Every (label, tensor, scale): ``tensor * scale`` finite in ``dtype``, checked for all at
    once: each tensor's largest magnitude (one ``aminmax`` per tensor, the cheapest reduction
    here; NaN propagates) times its scale, rounded to ``dtype``. Rounding is monotonic, so that
    is finite exactly when every scaled element is: the element-wise verdict at a third of the
    sum-then-scaled-copy checks' cost (a read's CPU time is what a request waiting on it waits
    for)."""
    if not factors:
        return
    extremes = [torch.aminmax(t) for _, t, _ in factors]
    lows = torch.stack([e.min for e in extremes]).float()
    highs = torch.stack([e.max for e in extremes]).float()
    scales = torch.tensor([abs(s) for _, _, s in factors], dtype=torch.float32)
    finite = torch.isfinite((torch.maximum(-lows, highs) * scales).to(dtype))
    if not bool(finite.all()):
        label = factors[int((~finite).nonzero()[0])][0]
        raise _refuse(path, f"tensor {label} holds non-finite values (NaN or inf) in {dtype}")


def load_peft_adapter(path: Path, args: ModelArgs, max_rank: int, dtype: torch.dtype) -> LoraWeights:
    config = read_adapter_config(path, args.lora_modules)
    weights_file = path / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise _refuse(path, "no adapter_model.safetensors (convert .bin adapters to safetensors)")
    tensors = dict(load_file(weights_file))
    try:
        vocab = read_vocab_parts(
            tensors, config, args, dtype, lambda key: _rank_and_scaling(path, config, key, max_rank)
        )
    except AdapterFormatError:
        raise
    except BadRequestError as exc:
        raise _refuse(path, str(exc)) from None
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    module_keys: dict[tuple[int, str], str] = {}
    magnitudes = _magnitudes(path, tensors, args, bool(config.get("use_dora")))
    biases = _biases(path, tensors, args, config, dtype)
    for key, tensor in tensors.items():
        if "lora_embedding" in key or "lm_head" in key or "embed_tokens" in key:
            raise _refuse(path, f"tensor {key} is not an embed_tokens / lm_head weight PEFT saves")
        match = KEY.search(key)
        if match is None or match.group(2) not in args.lora_modules:
            raise _refuse(
                path,
                f"tensor {key} is not a LoRA weight of {', '.join(args.lora_modules)} "
                f"(the {args.architecture} modules PEFT targets)",
            )
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        if layer >= args.num_layers:
            raise _refuse(path, f"tensor {key} names layer {layer}; the model has {args.num_layers}")
        pair = pairs.setdefault((layer, module), {})
        if which in pair:  # two prefixes for one module: PEFT would use one, never a mix
            raise _refuse(path, f"tensor {key} names layer {layer} {module} lora_{which} a second time")
        pair[which] = tensor
        module_keys[(layer, module)] = key.removeprefix(PREFIX).rsplit(".lora_", 1)[0]
    if not pairs and vocab is None and not biases:
        raise _refuse(path, "its target modules match nothing in the model")
    weights, scalings = {}, {}
    factors: list[tuple[str, torch.Tensor, float]] = []  # NaN/inf checked for all at once
    for (layer, module), pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise _refuse(path, f"layer {layer} {module} lacks lora_A or lora_B")
        rank, scaling = _rank_and_scaling(path, config, module_keys[(layer, module)], max_rank)
        key = module_keys[(layer, module)]
        a, b = _dense_factors(path, config.get("use_bdlora"), key, pair["A"], pair["B"])
        fan_in, fan_out = args.module_shape(module)
        if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise _refuse(
                path,
                f"layer {layer} {module}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do "
                f"not fit the model (expected A({rank}, {fan_in}) B({fan_out}, {rank}))",
            )
        a, b = a.to(dtype), b.to(dtype)
        factors.append((f"layer {layer} {module} lora_A", a, 1.0))
        factors.append((f"layer {layer} {module} lora_B (scaled)", b, scaling))
        weights[(layer, module)] = (a, b)
        scalings[(layer, module)] = scaling
    _all_finite(path, factors, dtype)
    if set(magnitudes) - set(weights):
        orphans = sorted(set(magnitudes) - set(weights))
        raise _refuse(path, f"DoRA magnitudes without LoRA weights for {orphans}")
    if config.get("use_dora") and set(weights) - set(magnitudes):
        raise _refuse(
            path,
            f"use_dora is set but {sorted(set(weights) - set(magnitudes))[0]} has no lora_magnitude_vector",
        )
    return LoraWeights(
        rank=max((a.shape[0] for a, _ in weights.values()), default=0),
        scalings=scalings,
        weights=weights,
        magnitudes=magnitudes,
        vocab=vocab,
        biases=biases,
        invocation=_invocation(path, config, magnitudes, vocab, biases),
    )


def _dense_factors(
    path: Path, bdlora: dict | None, module_key: str, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-LoRA (``use_bdlora``) saves one factor of a module block-diagonal, as its ``nblocks``
    diagonal blocks stacked (out, in / nblocks); PEFT's forward equals a plain LoRA with that
    factor's dense block-diagonal matrix, which is what is served (exact, in every backend)."""
    if not bdlora:
        return a, b
    nblocks = bdlora.get("nblocks", 1)
    on_a = any(p in module_key for p in bdlora.get("target_modules_bd_a") or [])
    on_b = any(p in module_key for p in bdlora.get("target_modules_bd_b") or [])
    if on_a and on_b:
        raise _refuse(path, f"use_bdlora: {module_key} matches target_modules_bd_a and _bd_b")
    if not (on_a or on_b) and bdlora.get("match_strict", True):
        raise _refuse(path, f"use_bdlora (match_strict): {module_key} matches no target_modules_bd_a / _bd_b")
    factor, name = (a, "lora_A") if on_a else (b, "lora_B")
    if not (on_a or on_b) or nblocks == 1:
        return a, b
    rows = factor.shape[0]
    if factor.dim() != 2 or rows % nblocks:
        raise _refuse(
            path,
            f"use_bdlora: {module_key} {name} of shape {tuple(factor.shape)} does not split "
            f"into {nblocks} blocks",
        )
    dense = torch.block_diag(*torch.chunk(factor, nblocks, dim=0))
    return (dense, b) if on_a else (a, dense)


def _invocation(
    path: Path, config: dict, magnitudes: dict, vocab: object, biases: dict
) -> tuple[int, ...] | None:
    """Activated LoRA's invocation tokens; refused with the kinds PEFT cannot activate either."""
    tokens = config.get("alora_invocation_tokens")
    if not tokens:
        return None
    if magnitudes or vocab is not None or biases:
        raise _refuse(
            path,
            "alora_invocation_tokens with DoRA, trained biases or embed_tokens / lm_head "
            "adapters is not supported",
        )
    return tuple(tokens)


def _module_vectors(
    path: Path, tensors: dict[str, torch.Tensor], args: ModelArgs, pattern: re.Pattern[str], what: str
) -> dict[tuple[int, str], torch.Tensor]:
    """The (out,) vectors per (layer, module) whose keys match ``pattern`` (DoRA magnitudes,
    trained biases), taken out of ``tensors``; each module once, of its output size, finite."""
    found: dict[tuple[int, str], torch.Tensor] = {}
    for key in [k for k in tensors if pattern.search(k)]:
        match = pattern.search(key)
        assert match is not None
        layer, module = int(match.group(1)), match.group(2)
        if module not in args.lora_modules or layer >= args.num_layers:
            raise _refuse(path, f"tensor {key} names no LoRA-targetable module of the model")
        if (layer, module) in found:
            raise _refuse(path, f"tensor {key} names layer {layer} {module}'s {what} a second time")
        tensor = tensors.pop(key)
        if tensor.shape != (args.module_shape(module)[1],):
            raise _refuse(path, f"tensor {key}: shape {tuple(tensor.shape)} does not fit {module}")
        _finite(path, key, tensor)
        found[(layer, module)] = tensor
    return found


def _biases(
    path: Path, tensors: dict[str, torch.Tensor], args: ModelArgs, config: dict, dtype: torch.dtype
) -> dict[tuple[int, str], torch.Tensor]:
    """The biases a ``bias="all"`` / ``"lora_only"`` adapter trained, taken out of ``tensors``."""
    found = _module_vectors(path, tensors, args, BIAS, "bias")
    if found and config.get("bias", "none") == "none":
        raise _refuse(
            path,
            f"the file holds trained biases ({sorted(found)[0]}) but adapter_config.json has bias='none'",
        )
    if found and config.get("use_dora"):
        raise _refuse(path, "DoRA with trained biases is not supported by the built-in engine")
    problem = bias_problem(found, args)
    if problem:
        raise _refuse(path, problem)
    return {key: tensor.to(dtype) for key, tensor in found.items()}


def _magnitudes(
    path: Path, tensors: dict[str, torch.Tensor], args: ModelArgs, use_dora: bool
) -> dict[tuple[int, str], torch.Tensor]:
    """DoRA's magnitude vectors (out,) in fp32, taken out of ``tensors``."""
    found = _module_vectors(path, tensors, args, MAGNITUDE, "magnitude")
    if found and not use_dora:
        raise _refuse(path, f"the file holds DoRA magnitudes ({sorted(found)[0]}) but use_dora is not set")
    return {key: tensor.float() for key, tensor in found.items()}
