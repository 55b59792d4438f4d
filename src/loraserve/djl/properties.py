"""Request and response properties: looked up without regard to case, stored as spelled.

HTTP header names are case-insensitive, and DJL hands them to handlers as the client spelled
them; handlers then test ``"X-Amzn-SageMaker-Adapter-Identifier" in properties``. The HTTP
layer gives loraserve lower-cased names, so every lookup here ignores case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class Properties(dict):
    """A ``dict`` whose lookups ignore case; iteration and ``repr`` keep the spelling used."""

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), **kwargs: Any) -> None:
        super().__init__()
        self.update(data, **kwargs)

    def _stored(self, key: Any) -> Any:
        """The spelling under which ``key`` is stored (``key`` itself when absent)."""
        if super().__contains__(key) or not isinstance(key, str):
            return key
        lowered = key.lower()
        return next((k for k in self if isinstance(k, str) and k.lower() == lowered), key)

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._stored(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(self._stored(key), value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(self._stored(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._stored(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._stored(key), default)

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(self._stored(key), *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return super().setdefault(self._stored(key), default)

    def update(self, data: Any = (), **kwargs: Any) -> None:  # type: ignore[override]
        pairs = data.items() if isinstance(data, Mapping) else data
        for key, value in [*pairs, *kwargs.items()]:
            self[key] = value

    def copy(self) -> Properties:
        return Properties(self)
