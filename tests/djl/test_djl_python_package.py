"""loraserve's ``djl_python``: the alias package, DJL's behaviours DJL's own tests do not cover,
and stepping aside for a real DJL ``djl_python``."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import djl_python
import loraserve.djl.encode_decode
from djl_python import Input, Output
from djl_python.encode_decode import encode
from djl_python.np_util import from_nd_list, to_nd_list
from loraserve.wire.errors import failure_status

pytestmark = pytest.mark.unit
SRC = Path(loraserve.djl.encode_decode.__file__).parents[2]


def test_alias_modules_are_loraserves_modules():
    import djl_python.encode_decode as alias

    assert alias is loraserve.djl.encode_decode and djl_python.Input is Input
    assert Path(djl_python.__file__).parent == SRC / "djl_python"


@pytest.mark.parametrize("real_first", [True, False])
def test_a_real_djl_python_wins_whatever_the_path_order(tmp_path, real_first):
    real = tmp_path / "djl_python"
    real.mkdir()
    (real / "__init__.py").write_text("REAL = True\nfrom .inputs import Input\n")
    (real / "inputs.py").write_text("class Input:\n    pass\n")
    paths = [str(tmp_path), str(SRC)] if real_first else [str(SRC), str(tmp_path)]
    code = "import djl_python, djl_python.inputs as i; print(djl_python.REAL, i.__file__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tmp_path.parent
    ).stdout.split()
    assert out == ["True", str(real / "inputs.py")]


def test_properties_ignore_case_and_keep_spelling():
    item = Input()
    item.properties["x-amzn-sagemaker-adapter-identifier"] = "a1"
    item.properties["Content-Type"] = "text/plain"
    assert "X-Amzn-SageMaker-Adapter-Identifier" in item.get_properties()
    assert item.get_properties()["CONTENT-TYPE"] == "text/plain"
    item.properties["content-type"] = "application/json"  # replaces, keeps the first spelling
    assert dict(item.properties) == {
        "x-amzn-sagemaker-adapter-identifier": "a1",
        "Content-Type": "application/json",
    }


def test_default_stream_format_is_outputs_json_lines():
    output = Output().add_stream_content(iter(["a", "b"]))
    lines = [output.stream_output_formatter(item) for item in output.stream_content]
    assert [json.loads(line) for line in lines] == [{"outputs": "a"}, {"outputs": "b"}]
    assert all(line.endswith(b"\n") for line in lines)
    assert Output().add_stream_content(iter([]), output_formatter=None).stream_output_formatter is None


def test_json_is_encoded_as_djl_does():
    output = Output().add_as_json({"a": [1, np.float32(0.5)], "b": np.arange(2)})
    expected = b'{\n  "a":[\n    1,\n    0.5\n  ],\n  "b":[\n    0,\n    1\n  ]\n}'
    assert bytes(output.content.value_at(0)) == expected
    assert Output().error("boom").code == 424
    assert json.loads(bytes(Output().error("boom").content.value_at(0))) == {
        "code": 424,
        "message": "invoke handler failure",
        "error": "boom",
    }


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([[1, -2]], dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 4), dtype=np.float16),
    ],
)
def test_ndlist_round_trip(array):
    encoded = to_nd_list([array, array])
    assert struct.unpack(">i", encoded[:4])[0] == 2 and encoded[4:10] == b"\x00\x04NDAR"
    decoded = from_nd_list(encoded)
    assert len(decoded) == 2 and decoded[0].dtype == array.dtype
    assert np.array_equal(decoded[1], array)


def test_ndlist_layout_of_one_float_array():
    """The exact bytes DJL's Java ``NDList.decode`` reads, field by field."""
    encoded = bytes(to_nd_list(np.array([1.5], dtype=np.float32)))
    expected = (
        struct.pack(">i", 1)
        + struct.pack(">h", 4)
        + b"NDAR"
        + struct.pack(">i", 3)
        + b"\x00"
        + struct.pack(">h", 7)
        + b"default"
        + struct.pack(">h", 7)
        + b"FLOAT32"
        + struct.pack(">iq", 1, 1)
        + struct.pack(">ih", 1, ord("?"))
        + b"<"
        + struct.pack(">i", 4)
        + struct.pack("<f", 1.5)
    )
    assert encoded == expected


def test_encode_csv_reaches_the_output():
    output = Output()
    encode(output, [{"a": "1"}], "text/csv")
    assert bytes(output.content.value_at(0)).decode().splitlines() == ["a", "1"]
    assert output.get_property("Content-Type") == "text/csv"


def test_finalize_and_batches():
    calls = []
    assert Output().finalize(calls.append, "sent").execute_finalize() is None and calls == ["sent"]
    from djl_python.test_model import create_concurrent_batch_request

    batch = create_concurrent_batch_request([{"x": 1}, {"x": 2}], [{"A": "1"}, {"A": "2"}])
    assert [b.get_as_json() for b in batch.get_batches()] == [{"x": 1}, {"x": 2}]
    assert [b.get_property("a") for b in batch.get_batches()] == ["1", "2"]


@pytest.mark.parametrize(
    "exc,status",
    [
        (MemoryError(), 507),
        (RuntimeError("CUDA error: out of memory"), 507),
        (type("OutOfMemoryError", (RuntimeError,), {})("gpu"), 507),
        (ValueError("bad"), 424),
    ],
)
def test_handler_exception_status(exc, status):
    assert failure_status(exc) == status


@pytest.mark.slow  # a fresh pytest process: several seconds
def test_a_users_own_pytest_of_a_djl_handler(tmp_path):
    """Where loraserve is installed, a DJL user's unit test of their ``model.py`` runs with plain
    pytest: DJL's ``adaptecho`` handler driven through ``djl_python.test_model``."""
    model = tmp_path / "adaptecho"
    model.mkdir()
    (model / "model.py").write_text((Path(__file__).parent / "resources/adaptecho/model.py").read_text())
    (tmp_path / "test_handler.py").write_text(f"""
from djl_python import Input
from djl_python.test_model import TestHandler, create_text_request

def test_register_then_predict():
    handler = TestHandler("model.py", {str(model)!r})
    registration = Input()
    registration.function_name = "register_adapter"
    registration.properties.update(name="a1", src="src")
    registration.content.add("echooption", b"-opt-")
    assert handler.inference(registration).message == "Adapter a1 registered"
    request = create_text_request("hello")
    request.content.add("adapter", b"a1")
    assert handler.inference(request).content.value_at(0) == b"a1-opt-hello"
""")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_handler.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
