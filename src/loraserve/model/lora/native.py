"""The native backend: the compiled BGMV kernel (``layer_ops``) computes each token's
``x @ A[slot]^T @ B[slot]`` in the compute dtype, straight from the token slots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.layer_ops import Bgmv
from loraserve.model.lora.base import LoraBackend, LoraPlan, Span, token_slots
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.weights import ModelWeights

LoraImage = Callable[..., None]  # the native lora_image(a, b, scales, layers, image_a, image_b, j, k, row)


def _native_ready(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()


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
        image_kernel: LoraImage | None = None,
    ) -> None:
        super().__init__(args, slots, rank, dtype, device, weights)
        self.kernel, self.image_kernel = kernel, image_kernel
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
        # per (module, rank): its layers in one native call, one pass over the factors (the
        # PyTorch path, stacked, converted, scaled and indexed per module, took ~2x the read's
        # time; it now writes each layer in place and serves where the kernel is not built)
        runs: dict[tuple[str, int], list[int]] = defaultdict(list)
        for (layer, module), (a, _) in adapter.weights.items():
            runs[(module, a.shape[0])].append(layer)
        for (module, r), on in runs.items():
            group, rows = self.args.module_slice(module)
            if group not in image:
                (fan_in, fan_out), k = self.args.fused_shape(group), len(self.groups[group])
                # zeroed unless every row is written below (each module of the group in every
                # layer at the adapter's rank): the kernel reads a slot's rows up to its rank
                covered = all(len(set(runs.get((m, rank), ()))) == layers for m in self.groups[group])
                new = torch.empty if covered else torch.zeros
                image[group] = (
                    new(layers, k * rank, fan_in, dtype=self.dtype),
                    new(layers, rank, fan_out, dtype=self.dtype),
                    torch.zeros((), dtype=torch.long),  # the modules it targets, as bits
                )
            image_a, image_b, bits = image[group]
            columns = self.module_columns(group, module, r)
            pairs = [adapter.weights[(layer, module)] for layer in on]
            scales = [adapter.scalings[(layer, module)] for layer in on]
            if self.image_kernel is not None and all(_native_ready(t, self.dtype) for p in pairs for t in p):
                a_list, b_list = [a for a, _ in pairs], [b for _, b in pairs]
                self.image_kernel(
                    a_list, b_list, scales, on, image_a, image_b, columns.start, columns.step, rows.start or 0
                )
            else:
                for layer, (a, b), scale in zip(on, pairs, scales):  # straight into place
                    image_a[layer, columns].copy_(a)
                    # B^T scaled: the fp32 product rounded to the dtype, as the kernel does
                    torch.mul(b.float().T, scale, out=image_b[layer, :r, rows])
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
