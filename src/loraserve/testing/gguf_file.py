"""Write a tiny Hugging Face model directory as a ``.gguf`` file (fp32 tensors, GPT-2 style BPE
tokenizer), with gguf's own tensor-name map and llama.cpp's layout conventions (q/k rows
permuted for Llama, Gemma norms stored as ``1 + w``), so tests can load every family from GGUF
through transformers' reader, as a user's file would be. Needs the ``engine`` extra (gguf)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GGUF_ARCH = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for Llama's q and k (transformers' reader reverses it)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model_dir: Path, target: Path, matrices: str = "F32") -> Path:
    """``matrices``: the GGML type of the 2-D weights whose rows fit its blocks (``Q4_1``, as the
    demo model ships, or ``F32``); the rest stays F32."""
    import gguf
    from gguf import quants
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    arch = GGUF_ARCH[config["model_type"]]
    arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    writer = gguf.GGUFWriter(str(target), arch)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_vocab_size(config["vocab_size"])
    if config.get("head_dim"):
        writer.add_rope_dimension_count(config["head_dim"])  # transformers reads Llama's head_dim here
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if arch.startswith("gemma") and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    _add_tokenizer(writer, model_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(arch_enum, layers)
    tied = config.get("tie_word_embeddings")
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        if tied and name == "lm_head.weight":
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"gguf has no name for {name} in {arch}")
        data = tensor.astype(np.float32)
        if arch == "llama" and ".attn_q." in gguf_name:
            data = _permute(data, heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            data = _permute(data, kv_heads)
        elif arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1  # llama.cpp stores Gemma's 1 + w
        kind = gguf.GGMLQuantizationType[matrices]
        block = gguf.GGML_QUANT_SIZES[kind][0]
        if kind != gguf.GGMLQuantizationType.F32 and data.ndim == 2 and data.shape[1] % block == 0:
            writer.add_tensor(gguf_name, quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:  # type: ignore[no-untyped-def]
    """The byte-level BPE of ``tokenizer.json`` as GGUF's "gpt2" tokenizer, padded to the
    model's vocabulary with unused tokens."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {added["content"] for added in spec.get("added_tokens", []) if added.get("special")}
    tokens = sorted(vocab, key=vocab.__getitem__)
    tokens += [f"<unused{i}>" for i in range(vocab_size - len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(1)
