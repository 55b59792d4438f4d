"""Fields a newer PEFT writes into adapter_config.json: each is listed (known, served or refused
by name); an unknown one is refused at registration by name (test_peft_conformance's REFUSED)."""

from __future__ import annotations

import dataclasses

import pytest

from loraserve.model.peft_config import FIELDS, config_problem


def test_astra_config_of_peft_0_22_is_known_and_its_init_refused_with_the_conversion():
    # PEFT 0.22 writes astra_config (null unless ASTRA initialised the adapter) into every config
    assert config_problem({"r": 8, "astra_config": None, "init_lora_weights": True}) is None
    astra = {"r": 8, "astra_config": {"calibration_samples": 8}, "init_lora_weights": "astra"}
    problem = config_problem(astra)
    assert problem is not None
    assert "init_lora_weights" in problem and "path_initial_model_for_weight_conversion" in problem


def test_every_field_of_the_installed_peft_lora_config_is_listed():
    """The installed PEFT's LoraConfig fields all have a decision here (a new PEFT release that
    adds one fails this test, not a user's registration)."""
    peft = pytest.importorskip("peft")
    fields = {field.name for field in dataclasses.fields(peft.LoraConfig)}
    assert not fields - set(FIELDS), sorted(fields - set(FIELDS))
