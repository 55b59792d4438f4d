"""Tiny, randomly initialised Llama-family models and PEFT adapters built on the spot, so tests
and examples need no download. Needs the ``engine`` and ``test`` extras (transformers, peft)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "loraserve serves many lora adapters from one base model",
    "hello world, this is a tiny tokenizer for tests 0123456789",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tokenizer(target: Path, vocab_size: int = 320) -> None:
    """A byte-level BPE tokenizer trained on a few sentences, saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(target)


def make_tiny_llama(
    target: Path,
    seed: int = 0,
    architecture: str = "llama",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 256,
) -> Path:
    """Save a random model of ``architecture`` (llama, mistral, qwen2) with a tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    make_tokenizer(target)
    vocab = len(json.loads((target / "tokenizer.json").read_text())["model"]["vocab"]) + 2
    config = AutoConfig.for_model(
        architecture,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():  # larger weights than the default init: livelier logits
            param.normal_(0, 0.2) if param.dim() > 1 else param.uniform_(0.8, 1.2)
    model.save_pretrained(target, safe_serialization=True)
    return target


def make_peft_adapter(
    base: Path,
    target: Path,
    rank: int = 8,
    target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
    alpha: int = 16,
    seed: int = 1,
    use_rslora: bool = False,
    **extra: Any,
) -> Path:
    """A PEFT LoRA adapter with random A and B (so it visibly changes the model); ``extra`` are
    more ``LoraConfig`` fields (``use_dora``, ``modules_to_save``, ...)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    modules = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=modules,
        init_lora_weights=False,
        use_rslora=use_rslora,
        lora_dropout=0.0,
        **extra,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:  # DoRA: near the base rows' norms PEFT starts from
                param.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
            elif "lora_" in name:
                param.normal_(0, 0.3)
            elif "trainable_tokens_delta" in name:  # retrained token rows: not the base rows
                param.add_(torch.randn_like(param) * 0.5)
            elif (name.endswith(".bias") and param.requires_grad) or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.2)  # trained biases, a retrained head: not the base
    peft_model.save_pretrained(str(target), safe_serialization=True)
    return target


def write_random_adapter(
    target: Path,
    shapes: dict[str, tuple[int, int]],
    layers: int,
    rank: int,
    target_modules: list[str],
    seed: int,
    alpha: int | None = None,
    std: float = 0.02,
    dora: bool = False,
    head: tuple[int, int] | None = None,
) -> Path:
    """A PEFT-format LoRA adapter with random weights, written directly (fast, no model needed);
    ``dora`` adds magnitude vectors (random, for timing: not PEFT's initialisation); ``head``
    (vocab, hidden) adds a random ``lm_head`` in ``modules_to_save``.

    ``shapes`` maps module name → (in_features, out_features), e.g. from ``ModelArgs.module_shape``.
    """
    import torch
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for module in target_modules:
            fan_in, fan_out = shapes[module]
            group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{group}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=generator) * std).to(
                torch.bfloat16
            )
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=generator) * std).to(
                torch.bfloat16
            )
            if dora:
                tensors[f"{prefix}.lora_magnitude_vector"] = torch.rand(fan_out, generator=generator) + 0.5
    if head is not None:
        weight = torch.randn(*head, generator=generator) * std
        tensors["base_model.model.lm_head.weight"] = weight.to(torch.bfloat16)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha or 2 * rank,
        "target_modules": target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "base_model_name_or_path": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_dora": dora,
        "modules_to_save": ["lm_head"] if head is not None else None,
    }
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target
