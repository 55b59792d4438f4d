"""Structured output in the mixed batch on a tiny random model: constrained rows (a JSON schema,
a regex, a choice; greedy and sampled) run beside free rows; every constrained output satisfies
its constraint, every free row's tokens equal the same request run without constrained
neighbours, and everything is given back, the matchers too, on every path (finish, abort,
preemption)."""

from __future__ import annotations

import json
import re

import pytest

from loraserve.constraints import OutputConstraint
from loraserve.engine import LLMEngine, SamplingParams
from loraserve.errors import BadRequestError
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama
from loraserve.wire.messages import FinishReason

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "n", "ok"],
    "additionalProperties": False,
}
REGEX = "[a-z]{2,5}-[0-9]{2}"
CHOICES = ("yes", "no", "maybe")
PROMPTS = ["the quick brown fox", "hello world", "lora adapters", "tiny tokenizer", "lazy dog", "one base"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    base = make_tiny_llama(root / "base")
    return base, make_peft_adapter(base, root / "qv", rank=4)


def _engine(base, adapter, max_model_len: int = 128, **kwargs) -> LLMEngine:
    return engine_with_adapters(base, {"qv": adapter}, max_model_len=max_model_len, max_lora_rank=8, **kwargs)


def constrained() -> list[tuple[str, str | None, SamplingParams]]:
    schema = OutputConstraint.json_schema(SCHEMA)
    return [
        (PROMPTS[0], None, SamplingParams(max_new_tokens=60, constraint=schema)),
        (PROMPTS[1], "qv", SamplingParams(max_new_tokens=60, constraint=schema, do_sample=True, seed=3)),
        (PROMPTS[2], None, SamplingParams(max_new_tokens=20, constraint=OutputConstraint("regex", REGEX))),
        (
            PROMPTS[3],
            "qv",
            SamplingParams(
                max_new_tokens=20, presence_penalty=0.5, constraint=OutputConstraint("choice", CHOICES)
            ),
        ),
    ]


def free() -> list[tuple[str, str | None, SamplingParams]]:
    return [
        (PROMPTS[4], None, SamplingParams(max_new_tokens=24, ignore_eos=True)),
        (PROMPTS[5], "qv", SamplingParams(max_new_tokens=24, ignore_eos=True)),
        (PROMPTS[0], None, SamplingParams(max_new_tokens=24, do_sample=True, seed=7, ignore_eos=True)),
        (PROMPTS[1], None, SamplingParams(max_new_tokens=24, repetition_penalty=1.3, ignore_eos=True)),
    ]


def _generate(engine: LLMEngine, requests):
    prompts, adapters, params = zip(*requests)
    return engine.generate(list(prompts), list(adapters), list(params))


def _check_constrained(results) -> None:
    schema_greedy, schema_sampled, regex, choice = results
    for result in (schema_greedy, schema_sampled):
        assert result.finish_reason == "eos_token", result.text
        jsonschema.validate(json.loads(result.text), SCHEMA)
    assert regex.finish_reason == "eos_token" and re.fullmatch(REGEX, regex.text), regex.text
    assert choice.finish_reason == "eos_token" and choice.text in CHOICES


def _assert_released(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["lora_refs"] == stats["adapter_holds"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_constrained_and_free_rows_in_one_batch(files):
    engine = _engine(*files)
    alone = [r.token_ids for r in _generate(engine, free())]
    mixed = _generate(engine, constrained() + free())
    _check_constrained(mixed[:4])
    assert [r.token_ids for r in mixed[4:]] == alone  # constrained neighbours change nothing
    assert max(len(r.token_ids) for r in mixed[:4]) < 60  # they finished on the grammar, not length
    _assert_released(engine)


def test_preemption_keeps_the_matcher_where_it_was(files):
    roomy = _generate(_engine(*files), constrained() + free())
    tight = _engine(*files, max_model_len=80, kv_cache_memory="48KiB", block_size=4)  # 96 tokens
    results = _generate(tight, constrained() + free())
    assert tight.stats()["preemptions"] > 0
    _check_constrained(results[:4])
    assert [r.token_ids for r in results] == [r.token_ids for r in roomy]  # nothing rewound or replayed
    _assert_released(tight)


def test_abort_and_finish_release_the_matcher(files):
    engine = _engine(*files)
    params = SamplingParams(max_new_tokens=60, constraint=OutputConstraint.json_schema(SCHEMA))
    seq = engine.add_request("the quick", "qv", params)
    engine.step()
    engine.step()
    assert seq.matcher is not None and len(seq.output_ids) == 2
    engine.abort(seq.request_id)
    assert seq.matcher is None and seq.finish_reason is FinishReason.ABORT
    done = engine.add_request("hello", None, SamplingParams(constraint=OutputConstraint("choice", CHOICES)))
    while engine.has_work():
        engine.step()
    assert done.finish_reason == "eos_token" and done.matcher is None  # finished: released too
    _assert_released(engine)


def test_uncompilable_constraints_are_refused_before_anything_is_queued(files):
    engine = _engine(*files)
    bad = OutputConstraint.json_schema({"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(BadRequestError, match="strin"):
        engine.add_request("x", None, SamplingParams(constraint=bad))
    with pytest.raises(BadRequestError, match="regex"):
        engine.compile_constraint(OutputConstraint("regex", "(unclosed"))
    _assert_released(engine)


def test_a_broken_matcher_fails_its_row_only(files):
    engine = _engine(*files)
    free_params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    alone = _generate(engine, [(PROMPTS[4], None, free_params)])[0].token_ids
    seq = engine.add_request(
        PROMPTS[0], None, SamplingParams(max_new_tokens=20, constraint=OutputConstraint("regex", "[0-9]+"))
    )
    other = engine.add_request(PROMPTS[4], None, free_params)
    seq.matcher.consume_token(engine.tokenizer.encode("x")[0])  # not a digit: the matcher's error state
    while engine.has_work():
        engine.step()
    assert seq.finish_reason == "error" and "structured output" in seq.error and seq.matcher is None
    assert other.output_ids == alone
    _assert_released(engine)
