"""The family registry reads each config it serves and refuses, by name, what it would otherwise
ignore: an unknown architecture, a config field the family does not implement (or implements for
other values only), a RoPE type outside the supported ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraserve.errors import ConfigError
from loraserve.model.families import SUPPORTED_ARCHITECTURES, load_model_config
from loraserve.testing.families import FAMILY_CONFIGS, family_config_fields

# family → (a field that changes the computation, a value the engine does not implement)
REFUSED = {
    "llama3": ("hidden_act", "gelu"),
    "mistral": ("logits_scaling", 2.0),  # Granite's: not a Mistral field at all
    "qwen2": ("use_mrope", True),
    "qwen3": ("hidden_act", "relu"),
    "gemma2": ("use_bidirectional_attention", True),
    "gemma3": ("hidden_activation", "gelu"),
    "phi3": ("lm_head_bias", True),
}


def _write_config(root: Path, family: str, **extra) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.for_model(FAMILY_CONFIGS[family][0], **family_config_fields(family))
    config.save_pretrained(root)
    raw = json.loads((root / "config.json").read_text())
    raw.update(extra)
    (root / "config.json").write_text(json.dumps(raw))
    return root


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_every_family_config_is_read(tmp_path, family):
    family_, args, _ = load_model_config(_write_config(tmp_path, family))
    assert args.architecture == FAMILY_CONFIGS[family][1] and args.num_layers == 3
    assert family_.name.lower() in family or family.startswith(family_.name.lower()[:4])


@pytest.mark.parametrize("family", list(REFUSED))
def test_unimplemented_field_is_refused_by_name(tmp_path, family):
    field, value = REFUSED[family]
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_model_config(_write_config(tmp_path, family, **{field: value}))


def test_unknown_architecture_lists_the_supported(tmp_path):
    root = _write_config(tmp_path, "llama3", architectures=["FalconForCausalLM"])
    with pytest.raises(ConfigError, match="FalconForCausalLM") as error:
        load_model_config(root)
    assert all(arch in str(error.value) for arch in SUPPORTED_ARCHITECTURES)


def test_unsupported_rope_type_is_named(tmp_path):
    root = _write_config(tmp_path, "llama3")
    raw = json.loads((root / "config.json").read_text())
    raw["rope_parameters"] = {"rope_type": "proportional", "rope_theta": 10000.0, "factor": 2.0}
    (root / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="proportional"):
        load_model_config(root)
