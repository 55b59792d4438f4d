"""DJL's ``adapter_formatter_mixin``: a service's own formatters (``CustomFormatterHandler``)
plus adapter weights (``AdapterManagerMixin``) plus each adapter's own ``model.py``.

An adapter directory holding a ``model.py`` has it loaded when the adapter is registered
(before its weights: broken code refuses the registration with DJL's 424 and loads nothing),
replaced when it is updated and dropped when it is unregistered. ``apply_*`` with an
``adapter_name`` use that adapter's formatter where it has one, else the service's own.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from loraserve.djl.adapter_manager_mixin import AdapterManagerMixin, refusal
from loraserve.djl.custom_formatter_handling import CustomFormatterHandler
from loraserve.djl.inputs import Input
from loraserve.djl.outputs import Output

log = logging.getLogger(__name__)
_versions = itertools.count(2)  # an updated adapter's code loads beside its current code


class AdapterFormatterMixin(CustomFormatterHandler, AdapterManagerMixin):
    """Adapter management with adapter-aware formatting, for a service class to inherit."""

    def __init__(self) -> None:
        CustomFormatterHandler.__init__(self)
        AdapterManagerMixin.__init__(self)
        self.adapter_code_registry: dict[str, CustomFormatterHandler] = {}

    def get_adapter_formatter_handler(self, adapter_name: str) -> CustomFormatterHandler | None:
        """The adapter's own code, or None when its directory had no ``model.py``."""
        return self.adapter_code_registry.get(adapter_name)

    def _adapter_handler(self, adapter_name: str | None, role: str) -> CustomFormatterHandler | None:
        handler = self.get_adapter_formatter_handler(adapter_name) if adapter_name else None
        return handler if handler is not None and getattr(handler, role) is not None else None

    def apply_input_formatter(
        self, decoded_payload: Any, adapter_name: str | None = None, **kwargs: Any
    ) -> Any:
        handler = self._adapter_handler(adapter_name, "input_formatter")
        if handler is not None:
            return handler.apply_input_formatter(decoded_payload, **kwargs)
        return super().apply_input_formatter(decoded_payload, **kwargs)

    def apply_output_formatter(self, output: Any, adapter_name: str | None = None, **kwargs: Any) -> Any:
        handler = self._adapter_handler(adapter_name, "output_formatter")
        if handler is not None:
            return handler.apply_output_formatter(output, **kwargs)
        return super().apply_output_formatter(output, **kwargs)

    async def apply_output_formatter_streaming_raw(
        self, response: AsyncIterator, /, adapter_name: str | None = None, **kwargs: Any
    ) -> AsyncIterator:
        handler = self._adapter_handler(adapter_name, "output_formatter")
        stream = (
            handler.apply_output_formatter_streaming_raw(response, **kwargs)
            if handler is not None
            else super().apply_output_formatter_streaming_raw(response, **kwargs)
        )
        async for item in stream:
            yield item

    def load_adapter_custom_code(self, adapter_name: str, adapter_path: str) -> CustomFormatterHandler:
        """Load ``adapter_path/model.py`` as the adapter's code (replacing any it had);
        a missing file is ``FileNotFoundError``, a failing one ``ValueError``."""
        handler = _loaded(adapter_name, adapter_path, adapter_name)
        self.unload_adapter_custom_code(adapter_name)
        self.adapter_code_registry[adapter_name] = handler
        return handler

    def unload_adapter_custom_code(self, adapter_name: str) -> bool:
        """Drop the adapter's code (its module leaves ``sys.modules``); False if it had none."""
        handler = self.adapter_code_registry.pop(adapter_name, None)
        if handler is None:
            return False
        handler.unload()
        log.info("Unloaded custom code of adapter %s", adapter_name)
        return True

    async def register_adapter(self, inputs: Input) -> Output:
        """The adapter's ``model.py`` first: if it cannot be loaded, no weights are."""
        name = inputs.get_property("name")
        path = inputs.get_property("src") or ""
        if os.path.isfile(os.path.join(path, "model.py")):
            try:
                self.load_adapter_custom_code(name, path)
            except Exception as exc:
                return refusal(exc)
        result = await super().register_adapter(inputs)
        if name not in self.adapter_registry:  # the weights were refused: no code either
            self.unload_adapter_custom_code(name)
        return result

    async def update_adapter(self, inputs: Input) -> Output:
        """The new ``model.py`` replaces the old only once the update succeeded (DJL's own
        mixin keeps the code of the first registration)."""
        name = inputs.get_property("name")
        path = inputs.get_property("src") or ""
        handler = None
        if name in self.adapter_registry and os.path.isfile(os.path.join(path, "model.py")):
            try:
                handler = _loaded(name, path, f"{name}@{next(_versions)}")  # beside the old one
            except Exception as exc:
                return refusal(exc)
        result = await super().update_adapter(inputs)
        if self.adapter_registry.get(name) is not inputs:  # refused: the old code stays
            if handler is not None:
                handler.unload()
            return result
        self.unload_adapter_custom_code(name)
        if handler is not None:
            self.adapter_code_registry[name] = handler
        return result

    async def unregister_adapter(self, inputs: Input) -> Output:
        """The weights, then the code; if the weights stay (a refusal), so does the code."""
        name = inputs.get_property("name")
        result = await super().unregister_adapter(inputs)
        if name not in self.adapter_registry:
            self.unload_adapter_custom_code(name)
        return result


def _loaded(adapter_name: str, adapter_path: str, namespace: str) -> CustomFormatterHandler:
    """The adapter's ``model.py`` loaded under ``namespace`` (its module's name)."""
    if not os.path.isfile(os.path.join(adapter_path, "model.py")):
        raise FileNotFoundError(f"model.py not found in adapter directory: {adapter_path}")
    handler = CustomFormatterHandler()
    try:
        handler.load_formatters(adapter_path, namespace=namespace)
    except Exception as exc:
        raise ValueError(f"Failed to load custom code for adapter {adapter_name}: {exc}") from exc
    log.info("Loaded custom code of adapter %s from %s", adapter_name, adapter_path)
    return handler
