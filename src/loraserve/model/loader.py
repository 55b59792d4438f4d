"""Load a model directory (config.json + safetensors, single or sharded) or a
``.gguf`` file (converted once to a cached safetensors directory)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraserve.errors import ConfigError
from loraserve.model.hardware import auto_dtype

log = logging.getLogger("loraserve.model")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    """``auto``: bf16 where the hardware computes it natively, else fp32 (``hardware``)."""
    if name in (None, "", "auto"):
        return auto_dtype(torch.device(device))
    if name not in DTYPES:
        raise ConfigError(f"option.dtype={name} is not one of fp32, bf16, fp16, auto")
    return DTYPES[name]


def cache_root() -> Path:
    base = os.environ.get("LORASERVE_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "loraserve"


def model_source(model_id: str, model_dir: Path | None = None) -> Path:
    """The directory or ``.gguf`` file ``option.model_id`` names; relative paths are taken from
    the model directory."""
    path = Path(model_id).expanduser()
    if not path.is_absolute() and model_dir is not None:
        path = model_dir / path
    if not path.exists():
        raise ConfigError(
            f"option.model_id {model_id} does not exist (resolved to {path}); "
            "loraserve loads local directories and .gguf files only, no hub"
        )
    return path


def resolve_model_path(source: Path, requantize: bool = False) -> Path:
    """The checkpoint directory for a ``model_source``: a ``.gguf`` file converted (once).
    ``requantize``: the weights will be quantized again (``option.quantize``), so a quantized
    GGUF file is converted in fp32, whose values give its blocks back exactly (bf16 would round
    them)."""
    if source.suffix == ".gguf":
        return convert_gguf(source, torch.float32 if requantize else None)
    return source


def convert_gguf(gguf_path: Path, dtype: torch.dtype | None = None) -> Path:
    """Dequantise a GGUF file through transformers once and cache it as safetensors, in
    ``dtype`` or the one its values need (``conversion_dtype``)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    natural = conversion_dtype(gguf_path) if dtype is not None else None  # read the file only then
    suffix = "" if dtype is None or dtype == natural else f"-{str(dtype).removeprefix('torch.')}"
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}{suffix}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or conversion_dtype(gguf_path)
    log.info("converting %s to safetensors (once; cached in %s)", gguf_path.name, target)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers refuses to save a GGUF-loaded model otherwise
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    config_file = staging / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)  # the saved weights are plain, dequantised tensors
    config_file.write_text(json.dumps(config, indent=2))
    os.replace(staging, target)
    return target


def conversion_dtype(gguf_path: Path) -> torch.dtype:
    """The cached copy's dtype: bf16 for quantized and bf16 files (it holds their values
    exactly enough), fp32 when the matrices are F32 or F16, which bf16 would round."""
    import gguf

    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(gguf_path)).tensors if len(t.shape) > 1}
    return torch.float32 if kinds and kinds <= {"F32", "F16"} else torch.bfloat16


def load_state_dict(model_path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single or sharded (``*.safetensors.index.json``) checkpoint."""
    index = model_path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no .safetensors weights in {model_path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(model_path / name))
    return state
