"""vLLM's runtime adapter API (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``): its
request bodies, its plain-text success messages and its error shape. Unknown fields are
refused by name, as a typo in ``lora_path`` must not pass silently."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from loraserve.errors import LoraserveError
from loraserve.specs.base import CLOSED

MODEL_FIELD = "loraserve's: which model, needed only when several are served on the built-in engine"


class LoadLoraAdapter(BaseModel):
    model_config = CLOSED
    lora_name: str = Field(min_length=1, max_length=128, description="the adapter's name")
    lora_path: str = Field(
        min_length=1,
        description="adapter directory, file:// URL or archive, inside the allowed adapter roots",
    )
    load_inplace: bool = Field(False, description="replace an adapter of that name if there is one")
    model: str | None = Field(None, description=MODEL_FIELD)


class UnloadLoraAdapter(BaseModel):
    model_config = CLOSED
    lora_name: str = Field(min_length=1, max_length=128)
    lora_int_id: int | None = Field(None, description="vLLM's; ignored: names identify adapters here")
    model: str | None = Field(None, description=MODEL_FIELD)


def loaded(name: str) -> str:
    return f"Success: LoRA adapter '{name}' added successfully."


def removed(name: str) -> str:
    return f"Success: LoRA adapter '{name}' removed successfully."


def error_json(exc: LoraserveError) -> dict[str, Any]:
    """vLLM's ``ErrorResponse``."""
    return {"error": {"message": exc.message, "type": exc.error_type, "param": None, "code": exc.status_code}}
