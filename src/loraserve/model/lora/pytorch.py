"""The PyTorch backend (every device and dtype): decode tokens are grouped by slot into a padded
(n, m, in) block — n slots, at most m tokens each — so a step costs two batched matmuls per fused
weight against the stacks themselves (the work of Punica's BGMV); prefill tokens use one pair of
matmuls per span. Slots are handed out lowest first, so n stays small."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraserve.model.lora.base import LoraBackend, LoraPlan, Span, token_slots


@dataclass(slots=True)
class GroupedPlan(LoraPlan):
    """The decode tokens grouped by slot, and the prefill spans that use an adapter."""

    n: int = 0  # decode groups span slots [0, n)
    m: int = 0  # tokens per group, padded
    gather: torch.Tensor | None = None  # (n*m,) token row per padded position; T = the zero row
    valid: torch.Tensor | None = None  # (k,) padded positions that hold a real token
    rows: torch.Tensor | None = None  # (k,) the token rows of those positions
    prefills: tuple[Span, ...] = ()  # (flat start, length, slot) with an adapter


class TorchLora(LoraBackend):
    """A (L, S, in, k*r), columns rank-major (``i*k + j``: rank i of module j); B (L, S, k*r, out)
    block-diagonal to match: row ``i*k + j`` holds module j's B row in that module's columns. On
    CPU the stacks are fp32: small batched matmuls run 3-4x faster in fp32 than in bf16 there
    (measured)."""

    def stack_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.device.type == "cpu" else dtype

    def stack_shapes(self, group: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        fan_in, fan_out = self.args.fused_shape(group)
        width, layers = len(self.groups[group]) * self.rank, self.args.num_layers
        return (layers, self.slots, fan_in, width), (layers, self.slots, width, fan_out)

    def write(self, group: str, layer: int, slot: int, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        stack_a, stack_b = self.stacks(group)
        cols, (_, rows) = self.module_columns(group, module, a.shape[0]), self.args.module_slice(module)
        stack_a[layer, slot, :, cols] = a.t().to(self.dtype)
        stack_b[layer, slot, cols, rows] = b.to(self.dtype)

    def plan(self, decode_slots: list[int], prefills: list[Span]) -> GroupedPlan | None:
        slots = token_slots(decode_slots, prefills)
        if slots is None:
            return None
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(decode_slots):
            if slot >= 0:
                groups.setdefault(slot, []).append(row)
        n = max(groups, default=-1) + 1
        m = max((len(rows) for rows in groups.values()), default=0)
        gather = [len(decode_slots)] * (n * m)
        valid, rows = [], []
        for slot, members in groups.items():
            for j, row in enumerate(members):
                gather[slot * m + j] = row
                valid.append(slot * m + j)
                rows.append(row)
        return GroupedPlan(
            self._tensor(slots),
            n,
            m,
            self._tensor(gather),
            self._tensor(valid),
            self._tensor(rows),
            tuple(p for p in prefills if p[2] >= 0),
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def add_lora(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, plan: LoraPlan) -> None:
        assert isinstance(plan, GroupedPlan), "the PyTorch backend runs the plans it builds"
        width = len(self.groups[group]) * self.used_rank
        a = self.a[group][layer, :, :, :width]  # (S, in, k*r_used)
        b = self.b[group][layer, :, :width]  # (S, k*r_used, out)
        if plan.n and plan.gather is not None and plan.valid is not None and plan.rows is not None:
            padded = torch.cat([x, x.new_zeros(1, x.shape[1])]).to(self.dtype)
            grouped = padded.index_select(0, plan.gather).view(plan.n, plan.m, x.shape[1])
            y = torch.bmm(torch.bmm(grouped, a[: plan.n]), b[: plan.n])  # (n, m, out)
            delta = y.view(plan.n * plan.m, -1).index_select(0, plan.valid).to(out.dtype)
            out.index_add_(0, plan.rows, delta)
        for start, length, slot in plan.prefills:
            if slot in self.users[group]:
                piece = x[start : start + length].to(self.dtype)
                out[start : start + length] += ((piece @ a[slot]) @ b[slot]).to(out.dtype)
