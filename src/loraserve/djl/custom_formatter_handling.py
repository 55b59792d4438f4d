"""DJL's ``custom_formatter_handling``: the functions a ``model.py`` marks with
``@input_formatter``, ``@output_formatter``, ``@prediction_handler`` or ``@init_handler``
(``input_parser``'s decorators), or SageMaker's ``model_fn`` / ``input_fn`` / ``predict_fn`` /
``output_fn`` where none is marked, applied around a model's own processing.

The file is imported once per handler, under a module name of its own per namespace (an
adapter's name), so two adapters' ``model.py`` never share a module; ``unload`` takes it out of
``sys.modules`` again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

from loraserve.djl.service_loader import import_as

log = logging.getLogger(__name__)

# handler attribute → the attribute ``input_parser``'s decorator sets on the function
MARKS = {
    "input_formatter": "is_input_formatter",
    "output_formatter": "is_output_formatter",
    "prediction_handler": "is_prediction_handler",
    "init_handler": "is_init_handler",
}
# handler attribute → SageMaker's script function, read only when nothing is marked (DJL's fallback)
SAGEMAKER_FUNCTIONS = {
    "init_handler": "model_fn",
    "input_formatter": "input_fn",
    "prediction_handler": "predict_fn",
    "output_formatter": "output_fn",
}


class CustomFormatterError(Exception):
    """User code failed (loading it, or one of its functions); the cause is kept."""

    def __init__(self, message: str, original_exception: BaseException) -> None:
        super().__init__(message)
        self.original_exception = original_exception
        self.__cause__ = original_exception


def module_name(namespace: str | None, path: str) -> str:
    """``ns_<namespace>_<hash>``: readable, and distinct for ``a-b`` and ``a_b`` (DJL's plain
    ``ns_<namespace>`` would give both one module)."""
    key = namespace or os.path.abspath(path)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    readable = re.sub(r"\W", "_", namespace or "model")
    return f"ns_{readable}_{digest}"


def find_marked(module: ModuleType, attribute: str) -> Callable | None:
    """The first function of ``module`` (by name) carrying ``attribute``, as DJL looks it up."""
    for name in dir(module):
        candidate = getattr(module, name)
        if callable(candidate) and getattr(candidate, attribute, False) is True:
            return candidate
    return None


class CustomFormatterHandler:
    """One ``model.py``'s formatters and handlers; the ``apply_*`` methods pass data through
    unchanged where the file defines no such function."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.input_formatter: Callable | None = None
        self.output_formatter: Callable | None = None
        self.prediction_handler: Callable | None = None
        self.init_handler: Callable | None = None
        self.is_sagemaker_script = False
        self.module_name: str | None = None

    def load_formatters(self, model_dir: str, namespace: str | None = None) -> None:
        """Import ``model_dir/model.py`` (none there: nothing to load, as in DJL) and pick up its
        functions; any failure, a syntax error included, is a ``CustomFormatterError``."""
        path = os.path.join(model_dir, "model.py")
        if not os.path.isfile(path):
            return
        name = module_name(namespace, path)
        try:
            module = import_as(path, name)
        except (Exception, SystemExit) as exc:  # user code: even sys.exit() is its failure
            raise CustomFormatterError(f"Failed to load custom code from {model_dir}: {exc!r}", exc) from exc
        self.unload()  # a handler loaded again drops its earlier module
        self.module_name = name
        for attribute, mark in MARKS.items():
            setattr(self, attribute, find_marked(module, mark))
        if not any(getattr(self, attribute) for attribute in MARKS):
            self._use_sagemaker_functions(module)
        log.info(
            "custom code from %s: input formatter %s, output formatter %s, SageMaker script %s",
            path,
            bool(self.input_formatter),
            bool(self.output_formatter),
            self.is_sagemaker_script,
        )

    def _use_sagemaker_functions(self, module: ModuleType) -> None:
        found = {attr: getattr(module, fn, None) for attr, fn in SAGEMAKER_FUNCTIONS.items()}
        found = {attr: fn for attr, fn in found.items() if callable(fn)}
        for attribute, function in found.items():
            setattr(self, attribute, function)
        self.is_sagemaker_script = bool(found)

    def unload(self) -> None:
        """Forget the functions and take the module out of ``sys.modules``."""
        if self.module_name is not None:
            sys.modules.pop(self.module_name, None)
        self._forget()

    def apply_input_formatter(self, decoded_payload: Any, **kwargs: Any) -> Any:
        """The input formatter's result (SageMaker's ``input_fn(bytes, content_type)``)."""
        if self.input_formatter is None:
            return decoded_payload
        if self.is_sagemaker_script:
            args: tuple = (decoded_payload.get_as_bytes(), kwargs.get("content_type"))
            return _run(self.input_formatter, "input formatter", *args)
        return _run(self.input_formatter, "input formatter", decoded_payload, **kwargs)

    def apply_output_formatter(self, output: Any, **kwargs: Any) -> Any:
        """The output formatter's result (SageMaker's ``output_fn(prediction, accept)``)."""
        if self.output_formatter is None:
            return output
        if self.is_sagemaker_script:
            return _run(self.output_formatter, "output formatter", output, kwargs.get("accept"))
        return _run(self.output_formatter, "output formatter", output)

    async def apply_output_formatter_streaming_raw(
        self, stream_generator: AsyncIterator, /, **kwargs: Any
    ) -> AsyncIterator:
        """Each item of the stream through the output formatter (``kwargs``: as for
        ``apply_output_formatter``)."""
        try:
            async for item in stream_generator:
                yield self.apply_output_formatter(item, **kwargs)
        except CustomFormatterError:
            raise
        except Exception as exc:
            raise CustomFormatterError("Custom streaming formatter execution failed", exc) from exc

    def apply_init_handler(self, model_dir: str, **kwargs: Any) -> Any:
        if self.init_handler is None:
            return None
        return _run(self.init_handler, "init handler", model_dir, **kwargs)

    def apply_prediction_handler(self, X: Any, model: Any, **kwargs: Any) -> Any:
        if self.prediction_handler is None:
            return None
        return _run(self.prediction_handler, "prediction handler", X, model, **kwargs)


def _run(function: Callable, role: str, *args: Any, **kwargs: Any) -> Any:
    """Call user code; its failure is a ``CustomFormatterError`` naming the role."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        log.exception("custom %s failed", role)
        raise CustomFormatterError(f"Custom {role} execution failed: {exc!r}", exc) from exc
