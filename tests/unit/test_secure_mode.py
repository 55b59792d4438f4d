"""SageMaker Secure Mode as DJL's plugin applies it: adapters carrying code or pickles are
refused by name; the controls come from SageMaker's variables, or all of them from ours."""

from __future__ import annotations

import re

import pytest

from loraserve.adapters.secure_mode import ALL_CONTROLS, PICKLES, REQUIREMENTS, SecureMode
from loraserve.errors import BadRequestError, ConfigError


def test_the_controls_in_force():
    assert SecureMode.from_env({}) is None
    assert SecureMode.from_env({"SAGEMAKER_SECURE_MODE": "false"}) is None
    assert SecureMode.from_env({"SAGEMAKER_SECURE_MODE": "true"}) == SecureMode(frozenset())  # none named
    named = {"SAGEMAKER_SECURE_MODE": "True", "SAGEMAKER_SECURITY_CONTROLS": "disallow_pickle_files, X"}
    assert SecureMode.from_env(named) == SecureMode(frozenset({PICKLES, "X"}))
    assert SecureMode.from_env({"LORASERVE_SECURE_MODE": "true"}) == SecureMode(ALL_CONTROLS)


@pytest.mark.parametrize(
    "files,named",
    [
        (["model.py"], "custom model.py"),
        (["requirements.txt"], "requirements.txt"),
        (["deep/inside/adapter_model.bin"], "pickle-format file deep/inside/adapter_model.bin"),
        (["optimizer.pt"], "pickle-format file optimizer.pt"),
    ],
)
def test_adapters_carrying_code_or_pickles_are_refused_by_name(tmp_path, files, named):
    (tmp_path / "adapter_config.json").write_text("{}")
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    with pytest.raises(BadRequestError, match=re.escape(named)):
        SecureMode(ALL_CONTROLS).check_adapter(tmp_path)
    SecureMode(frozenset()).check_adapter(tmp_path)  # no control named: nothing enforced


def test_a_clean_safetensors_adapter_passes_and_only_named_controls_apply(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_text("x")
    SecureMode(ALL_CONTROLS).check_adapter(tmp_path)
    (tmp_path / "requirements.txt").write_text("x")
    SecureMode(frozenset({PICKLES})).check_adapter(tmp_path)
    with pytest.raises(BadRequestError, match=r"requirements\.txt"):
        SecureMode(frozenset({REQUIREMENTS})).check_adapter(tmp_path)


def test_models_with_custom_code_or_remote_code_are_refused(tmp_path):
    policy = SecureMode(ALL_CONTROLS)
    with pytest.raises(ConfigError, match=r"entryPoint=model\.py"):
        policy.check_model(tmp_path, "model.py", {})
    policy.check_model(tmp_path, "djl_python.huggingface", {})
    with pytest.raises(ConfigError, match="trust_remote_code"):
        policy.check_model(tmp_path, None, {"trust_remote_code": "true"})
    (tmp_path / "pytorch_model.bin").write_text("x")
    with pytest.raises(ConfigError, match=r"pytorch_model\.bin"):
        policy.check_model(tmp_path, None, {})
