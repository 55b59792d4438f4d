"""Which handler serves a model — the built-in engine or the user's Python code — decided once,
when the model is loaded, from its directory and ``serving.properties``. The front (routes,
metrics), the worker (what it imports) and the Ray launcher all read this one answer.

DJL's rule: ``option.entryPoint`` wins (DJL's own LLM handler names mean the built-in engine);
else a ``model.py`` in the directory; else ``option.model_id`` means the built-in engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loraserve.config import ModelConfig
from loraserve.errors import ConfigError

BUILTIN_HANDLER = "loraserve.handlers.builtin_llm"
# DJL's own handler names that the built-in engine stands in for.
BUILTIN_ALIASES = frozenset(
    {
        "djl_python.huggingface",
        "djl_python.lmi_vllm.vllm_async_service",
        "djl_python.rolling_batch",
        "builtin",
        BUILTIN_HANDLER,
    }
)


class HandlerKind(str, Enum):
    BUILTIN = "builtin"  # loraserve's engine: /v1 routes, engine metrics, adapters read by the server
    PYTHON = "python"  # a user's model.py / entry point module, called with DJL Input/Output


@dataclass(frozen=True, slots=True)
class Handler:
    kind: HandlerKind
    entry: str  # what the worker imports: a module name or a file path

    @property
    def builtin(self) -> bool:
        return self.kind is HandlerKind.BUILTIN


def resolve_handler(model_dir: Path, config: ModelConfig) -> Handler:
    """The handler of ``model_dir``; raises ConfigError when it names none."""
    entry = config.entry_point
    if entry in BUILTIN_ALIASES:
        return Handler(HandlerKind.BUILTIN, BUILTIN_HANDLER)
    if entry:
        candidate = model_dir / entry
        if candidate.is_file():
            return Handler(HandlerKind.PYTHON, str(candidate))
        if entry.endswith(".py"):
            raise ConfigError(f"option.entryPoint={entry} does not exist in {model_dir}")
        return Handler(HandlerKind.PYTHON, entry)
    if (model_dir / "model.py").is_file():
        return Handler(HandlerKind.PYTHON, str(model_dir / "model.py"))
    if "model_id" in config.options:
        return Handler(HandlerKind.BUILTIN, BUILTIN_HANDLER)
    raise ConfigError(
        f"{model_dir} has no model.py and serving.properties sets no option.model_id; "
        "add a model.py with handle(inputs) or name a model with option.model_id"
    )
