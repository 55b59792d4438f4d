"""``option.quantize`` from a model's serving.properties reaches the built-in engine: a w8a8
model serves the base and an adapter with exactly the tokens of an in-process w8a8 engine (not
those of the unquantized one), and an unknown method fails that model's load by name while
the server's other model serves on."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.w8a8 import w8a8_available
from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

PARAMS = {"max_new_tokens": 8, "ignore_eos": True}
PROMPTS = ["the quick brown", "one two three four five", "hello"]

pytestmark = pytest.mark.skipif(
    not w8a8_available(torch.device("cpu")), reason="no int8 GEMM that sums in int32 on this CPU"
)


def _properties(base, quantize: str) -> str:
    return (
        f"engine=Python\noption.model_id={base}\noption.dtype=fp32\noption.max_lora_rank=8\n"
        f"option.max_model_len=256\noption.quantize={quantize}\n"
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    base = make_tiny_llama(root / "weights")
    for parent, quantize in ((root / "store" / "w8", "w8a8"), (root / "elsewhere" / "bad", "awq")):
        (parent / "adapters").mkdir(parents=True)
        (parent / "serving.properties").write_text(_properties(base, quantize))
    make_peft_adapter(base, root / "store" / "w8" / "adapters" / "qv", rank=4)
    engines = {}
    for quantize in ("w8a8", ""):
        engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_lora_rank=8, quantize=quantize))
        engine.register_adapter("qv", root / "store" / "w8" / "adapters" / "qv")
        engines[quantize] = engine
    args = ["--model-store", str(root / "store"), "--allowed-model-roots", str(root)]
    with ServerProcess(args, log_path=root / "server.log") as server:
        yield server, engines, root / "elsewhere" / "bad"


def _texts(engine: LLMEngine, adapter: str | None) -> list[str]:
    return [r.text for r in engine.generate(PROMPTS, [adapter] * len(PROMPTS), SamplingParams(**PARAMS))]


def test_a_w8a8_model_serves_the_w8a8_engines_tokens(env):
    server, engines, _ = env
    for adapter in (None, "qv"):
        served = [
            server.client.post(
                "/predictions/w8", json={"inputs": p, "parameters": PARAMS, "adapters": adapter or ""}
            ).json()["generated_text"]
            for p in PROMPTS
        ]
        assert served == _texts(engines["w8a8"], adapter)
    # the option made a difference the comparison can see
    assert _texts(engines["w8a8"], None) + _texts(engines["w8a8"], "qv") != (
        _texts(engines[""], None) + _texts(engines[""], "qv")
    )


def test_an_unknown_quantization_fails_only_its_model_by_name(env):
    server, _, bad = env
    response = server.client.post("/models", params={"url": str(bad), "model_name": "bad"})
    assert 400 <= response.status_code < 600
    assert "option.quantize=awq is not supported" in response.text
    served = server.client.post("/predictions/w8", json={"inputs": "x", "parameters": PARAMS})
    assert served.status_code == 200
    assert server.client.get("/ping").status_code == 200
