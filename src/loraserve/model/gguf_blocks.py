"""Which of the fused base matrices a GGUF file holds in a given block format, so a quantized
base can keep the file's own values: under ``option.quantize=q4`` a matrix the file stores as
Q4_1 is served with its own blocks, and one it stores otherwise (llama.cpp's mixes keep the
embedding or the output at Q8_0/Q6_K) stays in the compute dtype rather than losing precision
the file has."""

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


def matrices_in(gguf_path: Path, block_type: str) -> set[tuple[int | None, str]]:
    """(layer, group) for every fused group whose tensors are all ``block_type``; (None, "head")
    for the LM head (``output``, or ``token_embd`` when the head is tied to the embedding)."""
    import gguf

    tensors = gguf.GGUFReader(str(gguf_path)).tensors
    types = {t.name.removesuffix(".weight"): t.tensor_type.name for t in tensors}
    found: set[tuple[int | None, str]] = set()
    layers = {int(name.split(".")[1]) for name in types if name.startswith("blk.")}
    for layer in layers:
        for group, parts in GROUPS.items():
            kinds = {types[f"blk.{layer}.{p}"] for p in parts if f"blk.{layer}.{p}" in types}
            if kinds == {block_type}:
                found.add((layer, group))
    if types.get("output", types.get("token_embd")) == block_type:
        found.add((None, HEAD))
    return found


def q4_targets(source: Path) -> set[tuple[int | None, str]] | None:
    """What ``option.quantize=q4`` quantizes: every matrix of a checkpoint directory (None); of a
    GGUF file, the ones it holds as Q4_1 (the kernel's own scheme, so their blocks come back
    exactly). A GGUF file with no Q4_1 matrix is refused: quantizing its Q4_0/Q4_K/Q8_0 values
    again would serve weights the file does not have."""
    if source.suffix != ".gguf":
        return None
    found = matrices_in(source, "Q4_1")
    if not any(layer is not None for layer, _ in found):
        import gguf

        kinds = sorted({t.tensor_type.name for t in gguf.GGUFReader(str(source)).tensors if len(t.shape) > 1})
        raise ConfigError(
            f"option.quantize=q4 serves a GGUF file's Q4_1 matrices with their own blocks; "
            f"{source.name} holds {', '.join(kinds)} matrices: leave option.quantize unset (its values "
            "are served dequantized) or use a Q4_1 file"
        )
    return found
