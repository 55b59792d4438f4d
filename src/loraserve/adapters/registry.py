"""The per-model adapter registry: records, their lifecycle states, and pagination.

Plain Python (no tensors, no I/O) so that its rules are tested on their own. Lifecycle:
``registering`` → ``ready`` → ``unregistering`` → gone. A name is taken from the moment
registration starts, so two concurrent registrations of one name cannot both win. An adapter
that cannot be loaded or restored (its source vanished, its weights no longer load) is
``failed``: it keeps its registration and its reason, so it is persisted, shown, and can be
fixed by an update or removed; requests for it fail, nothing else does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum

from loraserve.errors import AdapterNotFoundError, BadRequestError, ConflictError
from loraserve.names import NAME_PATTERN


class AdapterState(str, Enum):
    REGISTERING = "registering"
    READY = "ready"
    UNREGISTERING = "unregistering"
    FAILED = "failed"


class AdapterOrigin(str, Enum):
    STARTUP = "startup"  # a sub-directory of the model's adapters/
    API = "api"  # the management API
    WORKFLOW = "workflow"  # declared by a workflow's configs.adapters
    RESOLVER = "resolver"  # found under a resolver root by the first request naming it


def new_identity() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class AdapterRecord:
    name: str
    src: str
    path: str
    preload: bool = True
    pin: bool = False
    options: dict[str, str] = field(default_factory=dict)
    origin: AdapterOrigin = AdapterOrigin.API
    state: AdapterState = AdapterState.REGISTERING
    version: int = 1  # DJL's per-adapter count; a name registered again starts at 1 again
    registered_at: float = field(default_factory=time.time)
    error: str | None = None  # why a failed adapter failed
    # This registration's identity, never reused (SGLang's LoRARef): the engine keys the
    # adapter's weights, holds and prefix-cache blocks by (name, identity), so a name deleted
    # and registered again, or updated, never meets the old version's state.
    identity: str = field(default_factory=new_identity)
    # DJL's AdapterFormatterMixin: the adapter's own model.py, as its workers reported loading it
    has_custom_code: bool = False
    formatters: tuple[str, ...] = ()  # "input_formatter" / "output_formatter" it defines

    def describe(self) -> dict[str, object]:
        """DJL's description (name, src, pin) plus loraserve's extra fields."""
        from loraserve.adapters.remote import is_remote, shown  # httpx: only when describing

        return {
            "name": self.name,
            "src": shown(self.src) if is_remote(self.src) else self.src,  # never a presigned query
            "pin": self.pin,
            "preload": self.preload,
            "state": self.state.value,
            "version": self.version,
            "origin": self.origin.value,
            "options": dict(self.options),
            "error": self.error,
            "has_custom_code": self.has_custom_code,
            "formatters": list(self.formatters),
        }


def validate_adapter_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequestError("adapter name is required (parameter 'name')")
    if not NAME_PATTERN.match(name):
        raise BadRequestError(
            f"invalid adapter name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def paginate(items: list, limit: object, token: object) -> tuple[list, str | None]:
    """DJL's ``limit`` / ``next_page_token`` (an offset) pagination."""
    try:
        size = int(str(limit)) if limit is not None else 100
        start = int(str(token)) if token not in (None, "") else 0
    except ValueError:
        raise BadRequestError("limit and next_page_token must be integers") from None
    if size <= 0 or start < 0:
        raise BadRequestError("limit must be > 0 and next_page_token >= 0")
    page = items[start : start + size]
    following = start + size
    return page, (str(following) if following < len(items) else None)


class AdapterRegistry:
    """Adapters of one model, in registration order."""

    def __init__(self) -> None:
        self._records: dict[str, AdapterRecord] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._records

    def __len__(self) -> int:
        return len(self._records)

    def begin_register(self, record: AdapterRecord) -> AdapterRecord:
        validate_adapter_name(record.name)
        if record.name in self._records:
            raise ConflictError(
                f"adapter {record.name} is already registered; use the update endpoint or unregister it first"
            )
        record.state = AdapterState.REGISTERING
        self._records[record.name] = record
        return record

    def finish_register(self, name: str) -> None:
        record = self._records[name]
        record.state, record.error = AdapterState.READY, None

    def mark_failed(self, name: str, reason: str) -> None:
        """Keep ``name`` registered but unusable, with the reason shown to the operator."""
        record = self._records[name]
        record.state, record.error = AdapterState.FAILED, reason

    def keep_failed(self, record: AdapterRecord, reason: str) -> AdapterRecord:
        """Hold a registration that could not be restored (kept so a later save keeps it)."""
        self._records.pop(record.name, None)
        record.state, record.error = AdapterState.FAILED, reason
        self._records[record.name] = record
        return record

    def abort_register(self, name: str) -> None:
        self._records.pop(name, None)

    def get(self, name: str) -> AdapterRecord:
        record = self._records.get(name)
        if record is None:
            raise AdapterNotFoundError(f"adapter {name} not found")
        return record

    def ready(self, name: str) -> AdapterRecord:
        """The record if it can serve requests now."""
        record = self.get(name)
        if record.state is not AdapterState.READY:
            raise AdapterNotFoundError(f"adapter {name} is {record.state.value}, not ready")
        return record

    def settled(self, name: str) -> AdapterRecord:
        """The record if no operation is under way on it (ready or failed): it may be updated."""
        record = self.get(name)
        if record.state not in (AdapterState.READY, AdapterState.FAILED):
            raise ConflictError(f"adapter {name} is {record.state.value}; try again shortly")
        return record

    def begin_unregister(self, name: str) -> tuple[AdapterRecord, AdapterState]:
        """Mark ``name`` unregistering; returns it and the state to go back to on failure."""
        record = self.settled(name)
        previous, record.state = record.state, AdapterState.UNREGISTERING
        return record, previous

    def abort_unregister(self, name: str, previous: AdapterState) -> None:
        self._records[name].state = previous

    def finish_unregister(self, name: str) -> None:
        self._records.pop(name, None)

    def records(self) -> list[AdapterRecord]:
        return list(self._records.values())

    def ready_records(self) -> list[AdapterRecord]:
        return [r for r in self._records.values() if r.state is AdapterState.READY]
