"""`loraserve demo` takes the allowed-roots flags that its 403 for an outside source names."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraserve import cli


def test_demo_takes_the_allowed_roots_its_403_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LORASERVE_ALLOWED_ADAPTER_ROOTS", "LORASERVE_ALLOWED_MODEL_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    adapters, models = tmp_path / "adapters", tmp_path / "models"
    argv = ["demo", "--allowed-adapter-roots", str(adapters), "--allowed-model-roots", str(models)]
    config = cli.demo_config(cli.build_parser().parse_args(argv), tmp_path)
    assert config.model_store == tmp_path.resolve()
    assert config.allowed_adapter_roots == [adapters.resolve()]
    assert config.allowed_model_roots == [models.resolve()]


def test_demo_roots_from_the_environment_else_its_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LORASERVE_ALLOWED_MODEL_ROOTS", raising=False)
    monkeypatch.setenv("LORASERVE_ALLOWED_ADAPTER_ROOTS", str(tmp_path / "from-env"))
    config = cli.demo_config(cli.build_parser().parse_args(["demo"]), tmp_path)
    assert config.allowed_adapter_roots == [(tmp_path / "from-env").resolve()]
    assert config.allowed_model_roots == [] and config.model_roots == [tmp_path.resolve()]
