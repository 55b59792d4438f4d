"""Which block format a GGUF file holds each fused base matrix in, so a quantized base keeps the
file's own values: under ``option.quantize=q4|q8`` a matrix the file stores as Q4_1 or Q8_0 is
served with its own blocks, and one it stores otherwise stays in the compute dtype rather than
losing precision the file has or being quantized again into values it does not have."""

from __future__ import annotations

from pathlib import Path

from loraserve.errors import ConfigError

# GGUF's per-layer tensor names (llama.cpp's, every architecture) of each fused group
GROUPS = {
    "qkv": ("attn_q", "attn_k", "attn_v", "attn_qkv"),
    "o": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "down": ("ffn_down",),
}
HEAD = "head"
SERVED = ("Q4_1", "Q8_0")  # the block formats a kernel here reads as they are

Matrix = tuple[int | None, str]  # (layer, fused group); (None, "head") for the LM head


def matrix_types(gguf_path: Path) -> dict[Matrix, str]:
    """The GGML type of every fused group whose tensors share one; the LM head's is ``output``'s,
    or ``token_embd``'s when the head is tied to the embedding."""
    import gguf

    tensors = gguf.GGUFReader(str(gguf_path)).tensors
    types = {t.name.removesuffix(".weight"): t.tensor_type.name for t in tensors}
    found: dict[Matrix, str] = {}
    layers = {int(name.split(".")[1]) for name in types if name.startswith("blk.")}
    for layer in layers:
        for group, parts in GROUPS.items():
            kinds = {types[f"blk.{layer}.{p}"] for p in parts if f"blk.{layer}.{p}" in types}
            if len(kinds) == 1:
                found[(layer, group)] = kinds.pop()
    head = types.get("output", types.get("token_embd"))
    if head is not None:
        found[(None, HEAD)] = head
    return found


def block_targets(source: Path, option: str) -> dict[Matrix, str] | None:
    """What ``option.quantize=q4|q8`` serves quantized: every matrix of a checkpoint directory
    (None: the option's scheme for all); of a GGUF file, the ones it holds as Q4_1 or Q8_0, each
    in its own format (a Q4_1 block holds its minimum and maximum, a Q8_0 block its largest
    magnitude, so the fp32-converted values give the blocks back exactly). A GGUF file with
    neither is refused: quantizing its Q4_0/Q4_K/... values again would serve weights it does
    not have."""
    if source.suffix != ".gguf":
        return None
    types = matrix_types(source)
    found = {matrix: kind for matrix, kind in types.items() if kind in SERVED}
    if not any(layer is not None for layer, _ in found):
        kinds = sorted(set(types.values()))
        raise ConfigError(
            f"option.quantize={option} serves a GGUF file's Q4_1 and Q8_0 matrices with their own "
            f"blocks; {source.name} holds {', '.join(kinds)} matrices: leave option.quantize unset "
            "(its values are served dequantized) or use a Q4_1 or Q8_0 file"
        )
    return found
