"""Adapters' own ``model.py`` in the built-in engine's worker: DJL's ``AdapterFormatterMixin`` as
its LMI handlers use it. The code is loaded when the adapter is registered, before its weights
(a broken file refuses the registration, 424, and nothing is registered), replaces the earlier
version once an update has succeeded, and is dropped when the adapter is unregistered.

The formatters run here, in the worker, never in the HTTP front: the front sends a request's
decoded JSON body (``FormatInput``) and the response it would send (``FormatOutput``), and gets
back what the formatter returned, checked to be plain JSON data. A formatter that raises or
returns something else is a 424 naming the adapter, as DJL answers a failed custom formatter.
"""

from __future__ import annotations

import json
import os
from typing import Any

from loraserve.djl.custom_formatter_handling import CustomFormatterError, CustomFormatterHandler
from loraserve.errors import HandlerError

ROLES = ("input_formatter", "output_formatter")


def roles(handler: CustomFormatterHandler | None) -> tuple[str, ...]:
    """The formatters ``handler``'s file defines, by DJL's names."""
    return tuple(role for role in ROLES if handler is not None and getattr(handler, role) is not None)


class AdapterCode:
    """The loaded ``model.py`` of each adapter that has one, by adapter name."""

    def __init__(self) -> None:
        self.handlers: dict[str, CustomFormatterHandler] = {}

    def load(self, name: str, path: str, identity: str) -> CustomFormatterHandler | None:
        """``path/model.py`` loaded as a module of this registration's own (None without one);
        not in use until ``install``, so a failed update leaves the current version serving."""
        if not os.path.isfile(os.path.join(path, "model.py")):
            return None
        handler = CustomFormatterHandler()
        try:
            handler.load_formatters(path, namespace=f"{name}_{identity}")
        except CustomFormatterError as exc:
            raise HandlerError(
                f"adapter {name}: its model.py could not be loaded: {exc.original_exception!r}"
            ) from None
        if handler.is_sagemaker_script:
            handler.unload()
            raise HandlerError(
                f"adapter {name}: its model.py defines SageMaker's input_fn/output_fn, which the "
                "built-in engine does not call; mark its functions @input_formatter / @output_formatter"
            )
        return handler

    def install(self, name: str, handler: CustomFormatterHandler | None) -> None:
        """``handler`` becomes the adapter's code (None: it has none); the old one is unloaded."""
        old = self.handlers.pop(name, None)
        if old is not None and old is not handler:
            old.unload()
        if handler is not None:
            self.handlers[name] = handler

    def format_input(self, name: str, body: Any, **kwargs: Any) -> dict[str, Any]:
        """The input formatter's result: the LMI request to parse (a JSON object)."""
        handler = self.handlers.get(name)
        if handler is None or handler.input_formatter is None:
            return body
        value = _plain(name, "input", lambda: handler.apply_input_formatter(body, **kwargs))
        if not isinstance(value, dict):
            raise HandlerError(
                f"adapter {name}'s input formatter returned {type(value).__name__}, not a JSON object "
                "(the LMI request to run)"
            )
        return value

    def format_output(self, name: str, output: Any) -> Any:
        """The output formatter's result: the response body (JSON data, or a string)."""
        handler = self.handlers.get(name)
        if handler is None or handler.output_formatter is None:
            return output
        return _plain(name, "output", lambda: handler.apply_output_formatter(output))


def _plain(name: str, role: str, run: Any) -> Any:
    """Run a formatter; its failure, or a result that is not JSON data, is a 424 naming it."""
    try:
        value = run()
    except CustomFormatterError as exc:
        raise HandlerError(f"adapter {name}'s {role} formatter failed: {exc.original_exception!r}") from None
    try:
        return json.loads(json.dumps(value, allow_nan=False))  # only plain data crosses to the front
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"adapter {name}'s {role} formatter returned no JSON data: {exc}") from None
