"""DJL's own ``djl_python`` unit tests (``upstream/``, copied unchanged) run against loraserve.

``test_input_parser.py`` builds its configuration with LMI's ``HuggingFaceProperties``, a
pydantic settings class of DJL's Hugging Face engine that loraserve does not ship; the tests
read only its ``enable_lora`` flag, so a test-only stand-in with that field is registered here.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import djl_python


@dataclass
class HuggingFaceProperties:
    """Test stand-in: the two fields DJL's input-parser tests set."""

    model_id: str = ""
    enable_lora: bool = False


def _install_properties_stand_in() -> None:
    ours = (Path(djl_python.__file__).parent / "_loraserve_alias.py").is_file()
    if ours and not hasattr(djl_python, "properties_manager"):  # never over DJL's own
        package = types.ModuleType("djl_python.properties_manager")
        package.__path__ = []
        module = types.ModuleType("djl_python.properties_manager.hf_properties")
        module.HuggingFaceProperties = HuggingFaceProperties  # type: ignore[attr-defined]
        sys.modules[package.__name__] = package
        sys.modules[module.__name__] = module


_install_properties_stand_in()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.unit)
