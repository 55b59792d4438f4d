"""The native backend: the compiled BGMV kernel (``layer_ops``) computes each token's
``x @ A[slot]^T @ B[slot]`` in the compute dtype, straight from the token slots."""

from __future__ import annotations

from collections import defaultdict

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.layer_ops import Bgmv
from loraserve.model.lora.base import LoraBackend, LoraPlan, Span, token_slots
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.weights import ModelWeights


class NativeLora(LoraBackend):
    """A (L, S, k*r, in): row ``i*k + j`` is rank i of module j. B (L, S, r, out) compact: row i
    holds rank i of every module, each in its own columns, so a token's B is one contiguous
    stream. Per slot, the kernel reads the adapter's rank and which modules it targets.

    An adapter is installed from its slot image (``prepare``: per group, its A and B rows already
    in this layout and dtype, built when it is read into memory, off the engine thread), two
    copies per group instead of a write per module; an r64 q/k/v/o adapter of SmolLM2 costs the
    engine thread ~10 ms the other way. A freed slot is not zeroed: the kernel reads only the
    rows below a slot's rank, of the modules it targets, and the next install rewrites them all."""

    def __init__(
        self,
        args: ModelArgs,
        slots: int,
        rank: int,
        dtype: torch.dtype,
        device: torch.device,
        kernel: Bgmv,
        weights: ModelWeights | None = None,
    ) -> None:
        super().__init__(args, slots, rank, dtype, device, weights)
        self.kernel = kernel
        self.columns = {  # per group: each module's first output column and width
            group: (
                torch.tensor([args.module_slice(m)[1].start or 0 for m in modules]),
                torch.tensor([args.module_shape(m)[1] for m in modules]),
            )
            for group, modules in self.groups.items()
        }
        self.slot_info: dict[str, torch.Tensor] = {}  # per group: (S, 2) rank, module bits

    def stack_shapes(self, group: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        fan_in, fan_out = self.args.fused_shape(group)
        k, layers = len(self.groups[group]), self.args.num_layers
        self.slot_info.setdefault(group, torch.zeros(self.slots, 2, dtype=torch.long))
        return (layers, self.slots, k * self.rank, fan_in), (layers, self.slots, self.rank, fan_out)

    def write(self, group: str, layer: int, slot: int, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        stack_a, stack_b = self.stacks(group)
        r, (_, rows) = a.shape[0], self.args.module_slice(module)
        stack_a[layer, slot, self.module_columns(group, module, r), :] = a.to(self.dtype)
        stack_b[layer, slot, :r, rows] = b.to(self.dtype)
        info = self.slot_info[group]
        info[slot, 0] = self.ranks[slot]
        info[slot, 1] |= 1 << self.groups[group].index(module)

    def prepare(self, adapter: LoraWeights) -> None:
        if adapter.slot_image is not None:
            return
        rank, layers = adapter.rank, self.args.num_layers
        image: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # one write per module and rank for all its layers at once (a write per layer and
        # module cost an r64 q/k/v/o adapter ~10 ms)
        runs: dict[tuple[str, int], list[int]] = defaultdict(list)
        for (layer, module), (a, _) in adapter.weights.items():
            runs[(module, a.shape[0])].append(layer)
        for (module, r), on in runs.items():
            group, rows = self.args.module_slice(module)
            if group not in image:
                (fan_in, fan_out), k = self.args.fused_shape(group), len(self.groups[group])
                image[group] = (
                    torch.zeros(layers, k * rank, fan_in, dtype=self.dtype),
                    torch.zeros(layers, rank, fan_out, dtype=self.dtype),
                    torch.zeros((), dtype=torch.long),  # the modules it targets, as bits
                )
            image_a, image_b, bits = image[group]
            index = torch.tensor(on)
            a = torch.stack([adapter.weights[(layer, module)][0] for layer in on])  # (n, r, in)
            image_a[index, self.module_columns(group, module, r)] = a.to(self.dtype)
            scales = torch.tensor([adapter.scalings[(layer, module)] for layer in on])[:, None, None]
            b = torch.stack([adapter.weights[(layer, module)][1] for layer in on]).float()  # (n, out, r)
            image_b[index, :r, rows] = (b.transpose(1, 2) * scales).to(self.dtype)
            bits |= 1 << self.groups[group].index(module)
        adapter.slot_image = image

    def load_lora(self, slot: int, adapter: LoraWeights) -> None:
        self.prepare(adapter)  # a no-op when the read already did it
        assert adapter.slot_image is not None
        for group, (image_a, image_b, bits) in adapter.slot_image.items():
            stack_a, stack_b = self.stacks(group)
            stack_a[:, slot, : image_a.shape[1]] = image_a.to(self.device)
            stack_b[:, slot, : image_b.shape[1]] = image_b.to(self.device)
            info = self.slot_info[group]
            info[slot, 0] = self.ranks[slot]
            info[slot, 1] = bits
            self.users[group].add(slot)

    def zero_slot(self, group: str, slot: int) -> None:
        pass  # never read before the next install rewrites it (see the class docstring)

    def clear(self, slot: int) -> None:
        super().clear(slot)
        for info in self.slot_info.values():
            info[slot] = 0

    def plan(self, decode_slots: list[int], prefills: list[Span]) -> LoraPlan | None:
        slots = token_slots(decode_slots, prefills)
        if slots is None:
            return None
        return LoraPlan(torch.tensor(slots, dtype=torch.long, device=self.device))

    def add_lora(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, plan: LoraPlan) -> None:
        starts, lengths = self.columns[group]
        self.kernel(
            x.contiguous(),
            plan.token_slots,
            self.a_layers[group][layer],
            self.b_layers[group][layer],
            out,
            len(self.groups[group]),
            self.used_rank,
            starts,
            lengths,
            self.slot_info[group],
        )
