"""Keep Python's cyclic garbage collector off the model's long-lived heap.

A worker that has loaded a model holds ~450k tracked objects (torch, transformers, the tokenizer,
the handler) that live as long as the process. Each full collection walks all of them: ~300 ms on
SmolLM2's worker, with the GIL held, so every request stalls. Under the thousand-adapter traffic
of ``benchmarks/bench_thousand_adapters.py`` 14 such collections took 3.6 s, the worst 688 ms.
Freezing what is alive once the model is loaded (``gc.freeze``, as vLLM does after start-up)
leaves the collector only the objects made since: requests, steps, adapters.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("loraserve.handlers")


def freeze_loaded_heap() -> int:
    """Collect once, then move every surviving object to the permanent generation, which the
    collector never scans (reference counting still frees them). Returns how many were frozen."""
    started = time.monotonic()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d long-lived objects for the collector in %.2f s", frozen, time.monotonic() - started)
    return frozen
