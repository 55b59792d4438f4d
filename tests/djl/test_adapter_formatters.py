"""Per-adapter ``model.py`` (DJL's ``AdapterFormatterMixin``): what DJL's own tests in
``upstream/`` leave out: module names that never collide, code replaced on update, code that
stays while its adapter stays, and failures that leave nothing behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import djl_python.adapter_formatter_mixin
import loraserve.djl.adapter_formatter_mixin
from djl_python import Input
from djl_python.adapter_formatter_mixin import AdapterFormatterMixin
from djl_python.custom_formatter_handling import CustomFormatterError, CustomFormatterHandler
from djl_python.test_model import decode_encoded_output_binary

pytestmark = pytest.mark.unit

FORMATTERS = """
from djl_python.input_parser import input_formatter, output_formatter

@input_formatter
def wrap(payload, **kwargs):
    return {{"inputs": "{tag}" + payload["text"]}}

@output_formatter
def tag(output):
    return {{"tagged": output, "by": "{tag}"}}
"""


class Service(AdapterFormatterMixin):
    def __init__(self, fail_removal: bool = False) -> None:
        super().__init__()
        self.fail_removal = fail_removal
        self.loaded: list[str] = []

    async def add_lora(self, lora_name: str, lora_alias: str, lora_path: str) -> bool:
        self.loaded.append(lora_name)
        return True

    async def remove_lora(self, lora_name: str, lora_alias: str) -> None:
        if self.fail_removal:
            raise RuntimeError("weights busy")
        self.loaded.remove(lora_name)

    async def pin_lora(self, lora_name: str, lora_alias: str) -> None:
        pass


def adapter(root: Path, name: str, code: str | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    if code is not None:
        (folder / "model.py").write_text(code)
    return folder


def request(name: str, src: Path | None = None) -> Input:
    inputs = Input()
    inputs.properties.update({"name": name} | ({"src": str(src)} if src else {}))
    return inputs


def answer(output) -> dict:
    return decode_encoded_output_binary(output.content.get("data"))


def ns_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith("ns_")}


def test_the_alias_is_loraserves_module():
    assert djl_python.adapter_formatter_mixin is loraserve.djl.adapter_formatter_mixin


def test_adapters_formatters_apply_by_name_and_leave_with_them(tmp_path):
    service, before = Service(), ns_modules()
    for name in ("a-b", "a_b"):  # DJL would give both the module ns_a_b
        folder = adapter(tmp_path, name, FORMATTERS.format(tag=name))
        asyncio.run(service.register_adapter(request(name, folder)))
    assert len(ns_modules() - before) == 2
    assert service.apply_input_formatter({"text": "x"}, adapter_name="a-b") == {"inputs": "a-bx"}
    assert service.apply_output_formatter("y", adapter_name="a_b") == {"tagged": "y", "by": "a_b"}
    assert service.apply_input_formatter({"text": "x"}) == {"text": "x"}  # no service formatter
    asyncio.run(service.unregister_adapter(request("a-b")))
    asyncio.run(service.unregister_adapter(request("a_b")))
    assert ns_modules() == before and service.adapter_code_registry == {} and service.loaded == []


def test_broken_code_refuses_the_registration_and_loads_nothing(tmp_path):
    service, before = Service(), ns_modules()
    result = asyncio.run(service.register_adapter(request("bad", adapter(tmp_path, "bad", "def f(:\n"))))
    assert result.code == 424 and answer(result)["code"] == "424"
    assert "bad" in answer(result)["error"]
    assert service.adapter_registry == {} and service.loaded == [] and ns_modules() == before


def test_update_replaces_the_code_and_a_failed_update_keeps_it(tmp_path):
    service = Service()
    folder = adapter(tmp_path, "a", FORMATTERS.format(tag="v1:"))
    asyncio.run(service.register_adapter(request("a", folder)))
    (folder / "model.py").write_text(FORMATTERS.format(tag="v2:"))
    asyncio.run(service.update_adapter(request("a", folder)))
    assert service.apply_input_formatter({"text": "x"}, adapter_name="a") == {"inputs": "v2:x"}
    (folder / "model.py").write_text("raise SystemExit(3)\n")
    assert asyncio.run(service.update_adapter(request("a", folder))).code == 424
    assert service.apply_input_formatter({"text": "x"}, adapter_name="a") == {"inputs": "v2:x"}


def test_code_stays_while_its_weights_could_not_be_removed(tmp_path):
    service = Service(fail_removal=True)
    asyncio.run(service.register_adapter(request("a", adapter(tmp_path, "a", FORMATTERS.format(tag="t")))))
    assert answer(asyncio.run(service.unregister_adapter(request("a"))))["error"] == "weights busy"
    assert service.get_adapter_formatter_handler("a") is not None and "a" in service.adapter_registry


def test_a_failing_formatter_is_a_custom_formatter_error_naming_its_role(tmp_path):
    handler = CustomFormatterHandler()
    handler.load_formatters(str(adapter(tmp_path, "a", FORMATTERS.format(tag="t"))), namespace="a")
    with pytest.raises(CustomFormatterError, match="input formatter") as raised:
        handler.apply_input_formatter({"no text": 1})
    assert isinstance(raised.value.original_exception, KeyError)
    handler.unload()
    assert handler.input_formatter is None and handler.apply_input_formatter(1) == 1


def test_sagemaker_functions_are_used_when_nothing_is_marked(tmp_path):
    code = "def input_fn(data, content_type):\n    return (data, content_type)\n"
    handler = CustomFormatterHandler()
    handler.load_formatters(str(adapter(tmp_path, "s", code)), namespace="s")
    inputs = Input()
    inputs.content.add("data", b"raw")
    assert handler.is_sagemaker_script
    assert handler.apply_input_formatter(inputs, content_type="text/plain") == (b"raw", "text/plain")
    handler.unload()
