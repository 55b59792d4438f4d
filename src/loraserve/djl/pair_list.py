"""DJL's ``PairList``: ordered (key, value) pairs where keys may repeat, as a request's content."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


class PairList:
    """Keys and values in two parallel lists; ``add`` ignores a ``None`` value, as DJL's does."""

    def __init__(
        self,
        keys: list | None = None,
        values: list | None = None,
        pair_list: Sequence[tuple[Any, Any]] | None = None,
        pair_map: Mapping[Any, Any] | None = None,
    ) -> None:
        self.keys: list[Any] = []
        self.values: list[Any] = []
        if keys and values:
            if len(keys) != len(values):
                raise ValueError("key value size mismatch.")
            self.keys, self.values = keys, values
        elif pair_list:
            for key, value in pair_list:
                self.add(key, value)
        elif pair_map:
            for key, value in pair_map.items():
                self.add(key, value)

    def add(
        self,
        key: Any = None,
        value: Any = None,
        index: int | None = None,
        pair: tuple[Any, Any] | None = None,
    ) -> None:
        if index is not None and value is not None:
            self.keys.insert(index, key)
            self.values.insert(index, value)
        elif pair:
            self.keys.append(pair[0])
            self.values.append(pair[1])
        elif value is not None:
            self.keys.append(key)
            self.values.append(value)

    def add_all(self, other: PairList | None) -> None:
        if other:
            self.keys.extend(other.get_keys())
            self.values.extend(other.get_values())

    def size(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def get(self, key: Any) -> Any:
        """The value of the first pair with ``key``; None when there is none."""
        try:
            return self.values[self.keys.index(key)]
        except ValueError:
            return None

    def key_at(self, index: int) -> Any:
        return self.keys[index]

    def value_at(self, index: int) -> Any:
        return self.values[index]

    def get_keys(self) -> list[Any]:
        return self.keys

    def get_values(self) -> list[Any]:
        return self.values

    def items(self) -> Iterator[tuple[Any, Any]]:
        """loraserve's addition: the pairs in order."""
        return iter(zip(self.keys, self.values))
