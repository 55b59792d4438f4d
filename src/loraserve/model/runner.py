"""The model of one served checkpoint plus its paged KV cache: loads the family's weights, picks
the kernels for this machine, and runs the decoder over a ``StepBatch``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.batch import StepBatch
from loraserve.model.decoder import Decoder
from loraserve.model.families import Family, load_model_config
from loraserve.model.gguf_blocks import Matrix
from loraserve.model.hardware import cpu_info
from loraserve.model.huge_pages import move_to_huge_pages
from loraserve.model.layer_ops import select_ops
from loraserve.model.loader import load_state_dict
from loraserve.model.lora import MergedLora, lora_backend
from loraserve.model.packed import Linears, packing_available
from loraserve.model.quantized import QuantizedLinears, quantized_linears
from loraserve.model.rope import RopeTables
from loraserve.model.weights import ModelWeights

log = logging.getLogger("loraserve.model")


class ModelRunner:
    """The model plus its paged KV cache: ``num_blocks`` blocks of ``block_size`` tokens."""

    def __init__(
        self,
        model_path: Path,
        dtype: torch.dtype,
        device: torch.device,
        batch_hint: int,
        max_len: int,
        lora_slots: int,
        max_lora_rank: int,
        model_config: tuple[Family, ModelArgs, Any] | None = None,
        quantize: str = "",
        file_blocks: dict[Matrix, str] | None = None,
    ) -> None:
        """``model_config``: what ``load_model_config(model_path)`` gave a caller that read it
        first; ``file_blocks``: a GGUF file's own block format per matrix, served as it is under
        ``quantize`` (``gguf_blocks.block_targets``; None: ``quantize`` for every matrix)."""
        self.family, self.args, hf_config = model_config or load_model_config(model_path)
        self.dtype, self.device = dtype, device
        self.max_len = min(max_len or self.args.max_position, self.args.max_position)
        self.weights = ModelWeights(
            self.args, self.family.weights, load_state_dict(model_path), dtype, device
        )
        move_to_huge_pages(self.weights.tensors())  # a single stream's decode streams them all
        kinds = {spec.rope for spec in self.args.layers}
        self.rope = RopeTables(self.family, hf_config, kinds, self.max_len, device)
        self.k_cache = self.v_cache = torch.empty(0)  # allocate_kv_cache sizes them
        self.block_size = 0
        # The small per-layer ops: native kernels for this CPU's ISA where they build, else PyTorch.
        self.ops = select_ops(dtype, device, self.args.rms_eps)
        self.lora = lora_backend(self.ops, self.args, lora_slots, max_lora_rank, dtype, device, self.weights)
        self.linears: Linears | QuantizedLinears = (
            quantized_linears(quantize, self.weights, dtype, device, batch_hint, file_blocks, self.ops)
            if quantize
            else Linears(
                self.weights,
                batch_hint,
                packing_available(dtype, device),
                self.ops.gemv,
                self.ops.packed_gemm,
            )
        )
        self.merged = MergedLora(
            self.args, self.weights, on_change=self.linears.repack, on_head_change=self.linears.repack_head
        )
        self.decoder = Decoder(self.args, self.weights, self.rope, self.ops, self.lora, self.linears)

    def info(self) -> dict[str, str]:
        """The start-up choices: what the CPU offers and which dtype and kernels run here."""
        cpu = cpu_info()
        return {
            "family": self.family.name,
            "device": str(self.device),
            "isa": cpu.isa,
            "torch_cpu_capability": cpu.torch_capability,
            "native_bf16": str(cpu.native_bf16).lower(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "kernels": self.ops.name,
            "linear": self.linears.name,
        }

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token over all layers."""
        args = self.args
        return 2 * args.num_layers * args.num_kv_heads * args.head_dim * self.dtype.itemsize

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Zeroed: block 0 pads block tables, and masked reads must never meet NaN."""
        args = self.args
        shape = (args.num_layers, num_blocks, args.num_kv_heads, block_size, args.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # (L, N, kvh, bs, d)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.block_size = block_size

    def zero_blocks(self, block_ids: list[int]) -> None:
        """Scrub blocks a failed sequence wrote (NaN would reach later users via masked reads)."""
        if block_ids:
            index = torch.tensor(block_ids, device=self.device)
            self.k_cache[:, index] = 0
            self.v_cache[:, index] = 0

    def kv_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Logits (N, vocab) in fp32 for the flat tokens ``batch.logits_index`` names."""
        return self.decoder.forward(batch, self.k_cache, self.v_cache)
