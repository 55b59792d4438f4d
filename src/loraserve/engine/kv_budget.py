"""How many KV-cache blocks to allocate: ``option.kv_cache_memory`` read once, at start-up.

Accepted forms: ``auto`` (default), a byte count with an optional unit (``512MiB``, ``4GiB``,
``2e9``), or a fraction of the memory free at start-up (``0.3``). ``auto`` takes a fifth of the
free RAM on CPU (the weights, activations and other processes need the rest) or half the free
memory of a CUDA device, but never more than the running batch could use at full length: the
extra would only hold more of the prefix cache while starving everything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loraserve.errors import ConfigError

if TYPE_CHECKING:
    import torch

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "tb": 10**12,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
AUTO_CPU_FRACTION, AUTO_CUDA_FRACTION = 0.2, 0.5


@dataclass(frozen=True, slots=True)
class KvBudget:
    num_blocks: int  # usable blocks, plus the null block
    block_size: int
    bytes: int
    source: str  # how the budget was chosen, for the start-up log

    @property
    def tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def parse_memory(value: str, option: str = "option.kv_cache_memory") -> float:
    """Bytes; a fraction of free memory (a plain number in (0, 1]) comes back negated."""
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(
            f"{option}={value!r}: give auto, a size such as 512MiB or 4GiB, or a "
            "fraction of free memory such as 0.3"
        )
    number = float(match.group(1))
    if not unit and 0 < number <= 1:
        return -number
    if number * _UNITS[unit] < 1:
        raise ConfigError(f"{option}={value!r} must be positive")
    return number * _UNITS[unit]


def plan_kv_cache(
    value: str,
    device: torch.device,
    bytes_per_token: int,
    block_size: int,
    max_model_len: int,
    max_num_seqs: int,
) -> KvBudget:
    """The block pool for this budget. It must hold one sequence of ``max_model_len`` tokens,
    or no request of that length could ever run."""
    block_bytes = bytes_per_token * block_size
    wanted = value.strip().lower()
    if wanted == "auto":
        fraction = AUTO_CUDA_FRACTION if device.type == "cuda" else AUTO_CPU_FRACTION
        full_batch = max_num_seqs * -(-max_model_len // block_size) * block_bytes
        budget = int(min(fraction * free_memory(device), full_batch))
        budget = max(budget, -(-max_model_len // block_size) * block_bytes)
        source = f"auto: {fraction:.0%} of free memory, at most the full batch at max_model_len"
    else:
        amount = parse_memory(value)
        budget = int(-amount * free_memory(device)) if amount < 0 else int(amount)
        source = f"option.kv_cache_memory={value}"
    blocks = budget // block_bytes
    needed = -(-max_model_len // block_size)
    if blocks < needed:
        raise ConfigError(
            f"option.kv_cache_memory={value} holds {blocks * block_size} tokens of KV cache, "
            f"fewer than one sequence of max_model_len={max_model_len} tokens "
            f"({bytes_per_token} bytes per token): raise the budget or lower max_model_len"
        )
    return KvBudget(blocks + 1, block_size, (blocks + 1) * block_bytes, source)
