"""DJL's ``adapter_manager_mixin``: the ``register_adapter`` / ``update_adapter`` /
``unregister_adapter`` hooks of a service that loads LoRA weights itself (``add_lora``,
``remove_lora``, ``pin_lora``), keeping each registration's Input in ``adapter_registry``.

Answers are DJL's: a success ``{"data": "Adapter X registered"}`` and a refusal
``{"data": "", "last": True, "code": 424, "error": ...}``, both ``Output.binary_encode``d. The
Output's own status is set to the refusal's code as well, so loraserve's front refuses the
registration however it reads the answer. Running out of LoRA slots is raised as a
``MemoryError`` (DJL's 507).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from typing import Any

from loraserve.djl.inputs import Input
from loraserve.djl.outputs import Output

log = logging.getLogger(__name__)
_OUT_OF_SLOTS = ("No free lora slots", "greater than the number of GPU LoRA slots")


def flag(inputs: Input, key: str, default: bool) -> bool:
    """A ``"true"`` / ``"false"`` content value of a registration Input."""
    return inputs.get_as_string(key).lower() == "true" if inputs.contains_key(key) else default


def refusal(exc: BaseException) -> Output:
    """DJL's error answer; out of LoRA slots is raised instead (a 507, not a refusal)."""
    if any(text in str(exc) for text in _OUT_OF_SLOTS):
        raise MemoryError(str(exc)) from exc
    outputs = Output(code=424, message=str(exc))
    return outputs.add(
        Output.binary_encode({"data": "", "last": True, "code": 424, "error": str(exc)}), key="data"
    )


def done(text: str) -> Output:
    return Output().add(Output.binary_encode({"data": text}), key="data")


def _mark_custom_code(inputs: Input) -> None:
    """``has_custom_code``: whether the adapter's directory holds a ``model.py``."""
    custom = os.path.isfile(os.path.join(inputs.get_property("src"), "model.py"))
    inputs.properties["has_custom_code"] = "true" if custom else "false"


def _names(inputs: Input) -> tuple[str, str]:
    name = inputs.get_property("name")
    return name, inputs.get_property("alias") or name


class AdapterManagerMixin(ABC):
    """Adapter weights only; ``AdapterFormatterMixin`` adds each adapter's own ``model.py``."""

    def __init__(self) -> None:
        self.adapter_registry: dict[str, Any] = {}

    @abstractmethod
    async def add_lora(self, lora_name: str, lora_alias: str, lora_path: str) -> Any:
        """Load the adapter's weights; a true result means they were loaded."""

    @abstractmethod
    async def remove_lora(self, lora_name: str, lora_alias: str) -> Any:
        """Drop the adapter's weights."""

    @abstractmethod
    async def pin_lora(self, lora_name: str, lora_alias: str) -> Any:
        """Keep the adapter's weights resident."""

    async def register_adapter(self, inputs: Input) -> Output:
        """Load (unless ``preload`` is false) and pin (if ``pin``); marks ``has_custom_code``."""
        name, alias = _names(inputs)
        path = inputs.get_property("src")
        preload, pin = flag(inputs, "preload", True), flag(inputs, "pin", False)
        loaded = False
        try:
            if not path or not os.path.exists(path):
                raise ValueError(f"Only local LoRA models are supported. {path} is not a valid path")
            if pin and not preload:
                raise ValueError("Can not set preload to false and pin to true")
            _mark_custom_code(inputs)
            if preload:
                loaded = bool(await self.add_lora(name, alias, path))
            if pin:
                await self.pin_lora(name, alias)
            self.adapter_registry[name] = inputs
        except Exception as exc:
            log.debug("registering adapter %s failed", alias, exc_info=True)
            if loaded:  # loaded but not pinned: nothing is left behind
                await self.remove_lora(name, alias)
            return refusal(exc)
        log.info("Registered adapter %s from %s", alias, path)
        return done(f"Adapter {alias} registered")

    async def update_adapter(self, inputs: Input) -> Output:
        """Load or drop the weights as ``preload`` changes, pin if ``pin`` is new; the path
        cannot change and a pin cannot be taken back (DJL's rules)."""
        name, alias = _names(inputs)
        if name not in self.adapter_registry:
            raise ValueError(f"Adapter {alias} not registered.")
        preload, pin = flag(inputs, "preload", True), flag(inputs, "pin", False)
        old = self.adapter_registry[name]
        try:
            if pin and not preload:
                raise ValueError("Can not set load to false and pin to true")
            if inputs.get_property("src") != old.get_property("src"):
                raise NotImplementedError("Updating adapter path is not supported.")
            if preload and not flag(old, "preload", True):
                await self.add_lora(name, alias, inputs.get_property("src"))
            elif not preload and flag(old, "preload", True):
                await self.remove_lora(name, alias)
            if pin != flag(old, "pin", False):
                if not pin:
                    raise ValueError(
                        f"Unpinning adapter is not supported. To unpin adapter '{alias}', please "
                        "delete the adapter and re-register it without pinning."
                    )
                await self.pin_lora(name, alias)
            _mark_custom_code(inputs)
            self.adapter_registry[name] = inputs
        except Exception as exc:
            log.debug("updating adapter %s failed", alias, exc_info=True)
            return refusal(exc)
        log.info("Updated adapter %s", alias)
        return done(f"Adapter {alias} updated")

    async def unregister_adapter(self, inputs: Input) -> Output:
        """Drop the weights, then the registration; if dropping fails, it stays registered."""
        name, alias = _names(inputs)
        if name not in self.adapter_registry:
            raise ValueError(f"Adapter {alias} not registered.")
        try:
            await self.remove_lora(name, alias)
            del self.adapter_registry[name]
        except Exception as exc:
            log.debug("unregistering adapter %s failed", alias, exc_info=True)
            return refusal(exc)
        log.info("Unregistered adapter %s", alias)
        return done(f"Adapter {alias} unregistered")
