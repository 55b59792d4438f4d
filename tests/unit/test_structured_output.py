"""The structured-output mask module on the tiny tokenizer: each step's mask allows exactly what
the constraint can take next, EOS only once it is complete; constraints llguidance cannot
compile are 400s naming the problem; the constraint itself is checked on construction."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from loraserve.constraints import OutputConstraint
from loraserve.engine.structured import (
    StructuredOutput,
    advance,
    apply_mask,
    blocked_tokens,
    complete,
    masked_rows,
)
from loraserve.errors import BadRequestError
from loraserve.wire.sampling import SamplingParams

pytest.importorskip("llguidance")
EOS = 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from loraserve.testing.tiny import make_tokenizer

    target = tmp_path_factory.mktemp("tok")
    make_tokenizer(target)
    return AutoTokenizer.from_pretrained(target)


@pytest.fixture(scope="module")
def structured(tokenizer):
    return StructuredOutput(tokenizer, len(tokenizer) + 2, {EOS})  # the tiny model's vocabulary is larger


def allowed_tokens(masks: torch.Tensor, vocab: int) -> torch.Tensor:
    return ~blocked_tokens(masks, vocab)


def walk(structured: StructuredOutput, constraint: OutputConstraint, seed: int, limit: int = 40):
    """Random tokens among those allowed until the constraint completes: (tokens, masks seen,
    the matcher)."""
    matcher, rng = structured.matcher(constraint), random.Random(seed)
    tokens: list[int] = []
    seen: list[torch.Tensor] = []
    while not complete(matcher) and len(tokens) < limit:
        allowed = allowed_tokens(structured.fill_masks([matcher]), structured.vocab_size)[0]
        seen.append(allowed)
        choices = allowed.nonzero().view(-1).tolist()
        token = rng.choice([t for t in choices if t != EOS] or choices)
        assert advance(matcher, token) is None
        tokens.append(token)
    return tokens, seen, matcher


@pytest.mark.parametrize("seed", range(5))
def test_regex_gives_exactly_three_digits_then_stops(structured, tokenizer, seed):
    tokens, seen, matcher = walk(structured, OutputConstraint("regex", "[0-9]{3}"), seed)
    assert re.fullmatch("[0-9]{3}", tokenizer.decode(tokens))
    assert complete(matcher)
    assert not any(bool(mask[EOS]) for mask in seen)  # EOS never allowed before the end
    final = allowed_tokens(structured.fill_masks([matcher]), structured.vocab_size)[0]
    assert final.nonzero().view(-1).tolist() == [EOS]  # complete: nothing but EOS


@pytest.mark.parametrize("seed", range(5))
def test_choice_ends_on_one_of_the_choices(structured, tokenizer, seed):
    choices = ("yes", "no", "maybe so")
    tokens, _, matcher = walk(structured, OutputConstraint("choice", choices), seed)
    assert tokenizer.decode(tokens) in choices and complete(matcher)


def test_json_schema_walk_validates(structured, tokenizer):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "c": {"enum": ["red", "blue"]}},
        "required": ["n", "c"],
        "additionalProperties": False,
    }
    tokens, _, matcher = walk(structured, OutputConstraint.json_schema(schema), seed=3, limit=60)
    assert complete(matcher)
    jsonschema.validate(json.loads(tokenizer.decode(tokens)), schema)


def test_tokens_past_the_tokenizer_are_never_allowed(structured, tokenizer):
    allowed = allowed_tokens(
        structured.fill_masks([structured.matcher(OutputConstraint("json_object"))]), 322
    )
    assert not allowed[0, len(tokenizer) :].any()


def test_mask_sets_disallowed_logits_to_minus_inf():
    scores = torch.zeros(40)
    masks = torch.tensor([[0b101, 1 << 3]], dtype=torch.int32)  # tokens 0, 2 and 35
    apply_mask(scores, blocked_tokens(masks, 40)[0])
    assert torch.isfinite(scores).nonzero().view(-1).tolist() == [0, 2, 35]


def test_a_mask_that_cannot_be_computed_blocks_its_row_only(structured):
    class Broken:
        def unsafe_compute_mask_ptr(self, pointer: int, size: int) -> None:
            raise RuntimeError("boom")

    good = structured.matcher(OutputConstraint("regex", "[0-9]"))
    blocked = blocked_tokens(structured.fill_masks([Broken(), good]), structured.vocab_size)
    assert blocked[0].all() and not blocked[1].all()


def test_masked_rows_equal_the_row_by_row_mask():
    logits = torch.randn(5, 70)
    masks = torch.randint(-(2**31), 2**31 - 1, (2, 3), dtype=torch.int32)
    blocked = blocked_tokens(masks, 70)
    batched = masked_rows(logits, [3, 1], blocked)
    for i, row in enumerate([3, 1]):
        one = logits[row].clone()
        apply_mask(one, blocked[i])
        assert torch.equal(batched[i], one)
    assert torch.isfinite(logits).all()  # the input is not changed


@pytest.mark.parametrize(
    "constraint,named",
    [
        (OutputConstraint.json_schema({"type": "object", "properties": {"a": {"type": "strin"}}}), "strin"),
        (OutputConstraint.json_schema({"type": "integer", "minimum": 5, "maximum": 2}), "minimum"),
        (OutputConstraint("regex", "[0-9"), "regex"),
        (OutputConstraint("grammar", "start: foo"), "foo"),
    ],
)
def test_what_llguidance_cannot_compile_is_a_bad_request_naming_it(structured, constraint, named):
    with pytest.raises(BadRequestError, match=named):
        structured.compile(constraint)


def test_compiled_once_and_copied_per_sequence(structured, tokenizer):
    constraint = OutputConstraint("regex", "[a-z]+")
    assert structured.compile(constraint) is structured.compile(constraint)
    first, second = structured.matcher(constraint), structured.matcher(constraint)
    assert advance(first, tokenizer.encode("a")[0]) is None  # advancing one copy
    assert first.is_accepting() and not second.is_accepting()  # leaves the other where it was


@pytest.mark.parametrize(
    "kind,value,named",
    [
        ("xml", "x", "kind"),
        ("choice", (), "choice"),
        ("choice", ("a", ""), "choice"),
        ("json_schema", "{not json", "not valid JSON"),
        ("json_schema", "[1]", "object"),
        ("regex", "", "empty"),
        ("regex", "x" * 70000, "at most"),
    ],
)
def test_constraint_is_checked_on_construction(kind, value, named):
    with pytest.raises(BadRequestError, match=named):
        OutputConstraint(kind, value)


@pytest.mark.parametrize("field", [{"ignore_eos": True}, {"min_tokens": 2}])
def test_sampling_params_refuse_what_fights_a_constraint(field):
    with pytest.raises(BadRequestError, match=next(iter(field))):
        SamplingParams(constraint=OutputConstraint("json_object"), **field)
    with pytest.raises(BadRequestError, match="constraint"):
        SamplingParams(constraint="[0-9]")  # type: ignore[arg-type]


# -- the OpenAI spec: response_format and structured_outputs into one constraint ---------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, OutputConstraint("json_object")),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
                }
            },
            OutputConstraint.json_schema(SCHEMA),
        ),
        ({"structured_outputs": {"json": SCHEMA}}, OutputConstraint.json_schema(SCHEMA)),
        ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, OutputConstraint.json_schema(SCHEMA)),
        ({"structured_outputs": {"regex": "[0-9]+"}}, OutputConstraint("regex", "[0-9]+")),
        ({"structured_outputs": {"grammar": "start: /a+/"}}, OutputConstraint("grammar", "start: /a+/")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, OutputConstraint("choice", ("a", "b"))),
        ({"structured_outputs": {"json_object": True}}, OutputConstraint("json_object")),
    ],
)
def test_openai_constraints_on_both_routes(body, expected):
    from loraserve.specs import openai as oai
    from loraserve.specs.base import parse

    chat = parse(oai.ChatCompletionRequest, {**CHAT, **body}).to_generate(None)
    completion = parse(oai.CompletionRequest, {"model": "m", "prompt": "x", **body}).to_generate(None)
    assert chat.sampling.constraint == completion.sampling.constraint == expected


@pytest.mark.parametrize(
    "body,named",
    [
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "regex and choice"),
        ({"structured_outputs": {}}, "exactly one"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        (
            {"response_format": {"type": "json_object", "json_schema": {"name": "x", "schema": {}}}},
            "json_schema",
        ),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
        ({"structured_outputs": {"regex": "a"}, "min_tokens": 2}, "min_tokens"),
        ({"structured_outputs": {"json": "{oops"}}, "not valid JSON"),
        ({"structured_outputs": {"json": "[1, 2]"}}, "object"),
    ],
)
def test_openai_constraints_that_cannot_work_are_refused_by_name(body, named):
    from loraserve.specs import openai as oai
    from loraserve.specs.base import parse

    with pytest.raises(BadRequestError, match=named):
        parse(oai.ChatCompletionRequest, {**CHAT, **body}).to_generate(None)


@pytest.mark.parametrize(
    "body,named",
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
        ({"structured_outputs": {"structural_tag": "x"}}, "structural_tag"),
        ({"structured_outputs": {"choice": []}}, "choice"),
    ],
)
def test_openai_malformed_constraints_are_400s_naming_the_field(body, named):
    from loraserve.specs import openai as oai
    from loraserve.specs.base import parse

    with pytest.raises(BadRequestError, match=named):
        parse(oai.ChatCompletionRequest, {**CHAT, **body})
