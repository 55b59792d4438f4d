"""What a model family is: the architectures it serves, the config fields it implements (an
allow-list: any other field is refused by name), how its config becomes ``ModelArgs``, and
where its checkpoint keeps each weight."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loraserve.errors import ConfigError
from loraserve.model.args import ModelArgs

# Fields of every transformers config that do not change what a causal LM computes at inference.
INERT = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
        "problem_type",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "use_cache",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "attention_dropout",
        "unk_token_id",
        "sep_token_id",
        "cls_token_id",
        "mask_token_id",
        "decoder_start_token_id",
        "auto_map",
        "tokenizer_class",
        "cache_implementation",
        "max_length",
        "use_return_dict",
        "torchscript",
        "tie_encoder_decoder",
        "is_decoder",
        "add_cross_attention",
        "finetuning_task",
        "prefix",
        "task_specific_params",
    }
)
# Read by every family (shapes, norms, RoPE through transformers' own rotary classes).
COMMON = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
    }
)
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")

Check = Callable[[Any], str | None]  # a field's value → why it is refused, or None


def only(*accepted: Any) -> Check:
    """A field implemented for these values only."""

    def check(value: Any) -> str | None:
        return None if value in accepted else f"only {', '.join(map(repr, accepted))} is implemented"

    return check


def falsy(value: Any) -> str | None:
    return None if not value else "only false/null is implemented"


@dataclass(frozen=True)
class WeightNames:
    """Where a layer's tensors sit in the checkpoint, under ``model.layers.{i}.``."""

    qkv: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    o: str = "self_attn.o_proj"
    gate_up: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    down: str = "mlp.down_proj"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    attn_out_norm: str | None = None  # Gemma: the attention output's norm
    mlp_out_norm: str | None = None
    q_norm: str | None = None
    k_norm: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    rotary: str  # transformers' rotary embedding class for this family (module:Class)
    to_args: Callable[[Any, Mapping[str, Any]], ModelArgs]  # (transformers config, raw json) → args
    fields: Mapping[str, Check | None] = field(default_factory=dict)  # None: any value is implemented
    weights: WeightNames = WeightNames()
    layer_typed_rope: bool = False  # one rotary table per layer type (Gemma 3)

    def check_fields(self, raw: Mapping[str, Any]) -> None:
        """Refuse, naming it, any field this family does not implement (or implements for other
        values only): a config field that changes the computation is never silently ignored."""
        for key, value in raw.items():
            if key in INERT or key in COMMON or key.startswith("_"):
                continue
            if key not in self.fields:
                raise ConfigError(
                    f"config.json field {key!r} is not implemented by the built-in engine's "
                    f"{self.name} family (model {raw.get('architectures')}); loraserve refuses "
                    "fields it would otherwise ignore"
                )
            check = self.fields[key]
            reason = check(value) if check is not None else None
            if reason:
                raise ConfigError(
                    f"config.json field {key!r} = {value!r} is not supported by the built-in "
                    f"engine's {self.name} family: {reason}"
                )


def base_args(config: Any, **overrides: Any) -> ModelArgs:
    """The fields every family shares, read from a transformers config object."""
    heads = config.num_attention_heads
    values: dict[str, Any] = dict(
        architecture=(config.architectures or [type(config).__name__])[0],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        rms_eps=config.rms_norm_eps,
        max_position=config.max_position_embeddings,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )
    values.update(overrides)
    return ModelArgs(**values)


def rope_types(config: Any) -> list[str]:
    params = config.rope_parameters or {}
    nested = [v for v in params.values() if isinstance(v, dict)]
    return [p.get("rope_type", "default") for p in (nested or [params])]


def window_of(config: Any, layer_type: str) -> int | None:
    return config.sliding_window if layer_type == "sliding_attention" else None
