"""Typed control operations for the built-in engine's worker (vLLM v1's UTILITY calls are the
pattern): adapter registration, statistics and an adapter's own formatters are messages with
fields, answered by a ``ControlDone``, ``EngineStats`` or ``Formatted``; a refusal comes back
as an error (``wire.errors``). A user's ``model.py`` still gets DJL's Input for its adapter
hooks (``serving.adapter_calls``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RegisterAdapter:
    """Register (or, sent as ``update_adapter``, replace) adapter ``name`` from ``path``."""

    name: str
    path: str  # resolved by the server, inside the allowed roots
    identity: str  # the registry's, for this registration (AdapterRecord.identity)
    preload: bool = True
    pin: bool = False


@dataclass(frozen=True, slots=True)
class UnregisterAdapter:
    name: str


@dataclass(frozen=True, slots=True)
class EngineStatsQuery:
    """Ask the engine what it holds now (the server's ``/metrics`` and the soak tests)."""


@dataclass(frozen=True, slots=True)
class FormatInput:
    """Run adapter ``adapter``'s input formatter (its ``model.py``, loaded by the worker) on a
    request's decoded JSON body; answered by ``Formatted``. User code never runs in the front."""

    adapter: str
    body: Any


@dataclass(frozen=True, slots=True)
class FormatOutput:
    """Run adapter ``adapter``'s output formatter on the response the front would send."""

    adapter: str
    output: Any


ControlOp = RegisterAdapter | UnregisterAdapter | EngineStatsQuery | FormatInput | FormatOutput


@dataclass(frozen=True, slots=True)
class ControlDone:
    message: str
    # a registration: which of DJL's formatters the adapter's model.py defines
    # ("input_formatter", "output_formatter"); ``custom_code``: it has a model.py at all
    formatters: tuple[str, ...] = ()
    custom_code: bool = False


@dataclass(frozen=True, slots=True)
class Formatted:
    """What a formatter returned (plain JSON data: it crosses to the front)."""

    value: Any


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine's figures (``LLMEngine.stats`` plus the adapter cache's), by name."""

    figures: dict[str, Any] = field(default_factory=dict)


# The memory tiers an adapter's ``adapter_residency`` figures name (``AdapterCache.residency``):
# a compute slot, CPU memory, or on disk only (its source; a remote one is fetched at registration).
ADAPTER_TIERS = ("resident", "in_memory", "registered")
