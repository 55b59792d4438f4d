"""Virtual token counters (VTC: Sheng et al., "Fairness in Serving Large Language Models",
OSDI 2024): fair service between clients — here each adapter, and the base model — under
contention, so one adapter's flood cannot starve another's traffic.

Every client has a counter of the service it received, in weighted tokens (a prompt token
costs ``prompt_weight``, a generated one ``output_weight``: decoding is the dearer part).
Admission serves the backlogged client with the smallest counter. A client that becomes
backlogged has its counter lifted to the smallest backlogged counter (or, with nobody
backlogged, the counter of the last client to leave the backlog), so idling earns no credit
and a newcomer cannot starve the others either. Pure bookkeeping: no tensors, no locks.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

Client = Hashable  # an adapter name, or None for the base model


class VirtualTokenCounter:
    def __init__(self, prompt_weight: float = 1.0, output_weight: float = 2.0) -> None:
        self.prompt_weight, self.output_weight = prompt_weight, output_weight
        self.counters: dict[Client, float] = {}
        self.backlogged: set[Client] = set()
        self._last_left = 0.0  # counter of the last client to leave an otherwise empty backlog

    def arrive(self, client: Client) -> None:
        """``client`` has a new waiting request: lift it if it was not backlogged."""
        if client in self.backlogged:
            return
        floor = min((self.counters[c] for c in self.backlogged), default=self._last_left)
        self.counters[client] = max(self.counters.get(client, 0.0), floor)
        self.backlogged.add(client)

    def leave(self, client: Client) -> None:
        """``client`` has no waiting request left."""
        self.backlogged.discard(client)
        if not self.backlogged:
            self._last_left = self.counters.get(client, self._last_left)

    def admitted(self, client: Client, prompt_tokens: int) -> None:
        self.counters[client] = self.counters.get(client, 0.0) + self.prompt_weight * prompt_tokens

    def generated(self, client: Client, tokens: int = 1) -> None:
        self.counters[client] = self.counters.get(client, 0.0) + self.output_weight * tokens

    def order(self, clients: Iterable[Client]) -> list[Client]:
        """``clients`` (given oldest head request first) by counter; ties keep that order."""
        return sorted(clients, key=lambda c: self.counters.get(c, 0.0))

    def forget(self, keep: set[Client]) -> None:
        """Drop counters of idle clients (not in ``keep``) that a return would lift anyway:
        those at or below the floor. Bounds the table by the clients seen recently."""
        floor = min((self.counters[c] for c in self.backlogged), default=self._last_left)
        for client in [c for c, value in self.counters.items() if c not in keep and value <= floor]:
            del self.counters[client]
