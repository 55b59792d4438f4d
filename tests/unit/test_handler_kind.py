"""Which handler serves a model is decided by one rule (DJL's), once, for front and worker."""

from __future__ import annotations

import pytest

from loraserve.config import ModelConfig
from loraserve.errors import ConfigError
from loraserve.handler_kind import BUILTIN_HANDLER, HandlerKind, resolve_handler

pytestmark = pytest.mark.unit


def _config(**options: str) -> ModelConfig:
    return ModelConfig.from_properties({f"option.{k}": v for k, v in options.items()})


@pytest.mark.parametrize(
    "entry", ["djl_python.huggingface", "djl_python.lmi_vllm.vllm_async_service", "djl_python.rolling_batch"]
)
def test_djl_llm_entry_points_are_the_builtin_engine(tmp_path, entry):
    handler = resolve_handler(tmp_path, _config(model_id="/m", entryPoint=entry))
    assert handler.kind is HandlerKind.BUILTIN and handler.entry == BUILTIN_HANDLER


def test_model_py_wins_over_model_id(tmp_path):
    (tmp_path / "model.py").write_text("def handle(inputs): return None\n")
    handler = resolve_handler(tmp_path, _config(model_id="/m"))
    assert handler.kind is HandlerKind.PYTHON and handler.entry == str(tmp_path / "model.py")


def test_model_id_alone_is_the_builtin_engine(tmp_path):
    assert resolve_handler(tmp_path, _config(model_id="/m")).builtin


def test_an_entry_point_file_or_module_is_python(tmp_path):
    (tmp_path / "serve.py").write_text("def handle(inputs): return None\n")
    assert resolve_handler(tmp_path, _config(entryPoint="serve.py")).entry == str(tmp_path / "serve.py")
    assert resolve_handler(tmp_path, _config(entryPoint="my_pkg.handler")).kind is HandlerKind.PYTHON
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_handler(tmp_path, _config(entryPoint="missing.py"))


def test_a_directory_naming_no_handler_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no model\.py"):
        resolve_handler(tmp_path, _config())
