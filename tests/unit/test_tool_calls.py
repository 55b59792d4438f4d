"""Tool-call parsing in each model format, whole and streamed (held back from the marker on)."""

from __future__ import annotations

import json

import pytest

from loraserve.errors import BadRequestError
from loraserve.handlers.tool_calls import ToolCallFilter, detect_format, parse

WEATHER = {"city": "Paris", "unit": "c"}
ANSWERS = {
    "hermes": 'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
    '</tool_call>\n<tool_call>{"name": "time", "arguments": {}}</tool_call>',
    "mistral": 'Let me check.[TOOL_CALLS][{"name": "weather", "arguments": {"city": "Paris", "unit": "c"}}, '
    '{"name": "time", "arguments": {}}]',
    "llama3_json": '<|python_tag|>{"name": "weather", "parameters": {"city": "Paris", "unit": "c"}}; '
    '{"name": "time", "parameters": {}}',
}


@pytest.mark.parametrize("format_", list(ANSWERS))
def test_calls_parse_whole_and_streamed_alike(format_):
    content, calls = parse(ANSWERS[format_], format_)
    assert [c.name for c in calls] == ["weather", "time"]
    assert json.loads(calls[0].arguments) == WEATHER and json.loads(calls[1].arguments) == {}
    assert content == ("" if format_ == "llama3_json" else "Let me check.")
    for size in (1, 3, 7):  # any split of the stream into deltas
        stream = ToolCallFilter(format_)
        text = ANSWERS[format_]
        sent = "".join(stream.feed(text[i : i + size]) for i in range(0, len(text), size))
        rest, streamed = stream.finish()
        assert (sent + rest).strip() == content
        assert [(c.name, c.arguments) for c in streamed] == [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("format_", list(ANSWERS))
def test_text_without_calls_or_with_broken_ones_is_all_content(format_):
    for text in ("Paris is in France. <tool", "Paris <tool_call>{not json</tool_call>", "{broken"):
        stream = ToolCallFilter(format_)
        sent = "".join(stream.feed(ch) for ch in text)
        rest, calls = stream.finish()
        assert calls == [] and sent + rest == text
        assert parse(text, format_) == (text, [])


def test_the_format_comes_from_the_option_or_the_template():
    assert detect_format("{% if tools %}<tool_call>{% endif %}", None) == "hermes"
    assert detect_format("[TOOL_CALLS]", "auto") == "mistral"
    assert detect_format("<|python_tag|>", None) == "llama3_json"
    assert detect_format("{{ messages }}", None) is None
    assert detect_format("<tool_call>", "mistral") == "mistral"
    with pytest.raises(BadRequestError, match="tool_call_parser"):
        detect_format(None, "gpt")


def test_a_sequence_s_events_hold_the_call_back_and_its_summary_carries_it():
    from types import SimpleNamespace

    from loraserve.engine.sequence import TokenEvent
    from loraserve.handlers.generation import _Track

    text = ANSWERS["hermes"]
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    seq = SimpleNamespace(
        text=text, prompt_ids=[1], output_ids=list(range(len(pieces))), logprobs=[None] * len(pieces)
    )
    track = _Track(0, seq, score_only=False, tool_format="hermes")  # type: ignore[arg-type]
    outputs = [
        track.token(TokenEvent(1, i, piece, None, "eos_token" if i == len(pieces) - 1 else None), None, False)
        for i, piece in enumerate(pieces)
    ]
    assert "".join(o.text for o in outputs).strip() == "Let me check."
    last = outputs[-1]
    assert [c.name for c in last.tool_calls] == ["weather", "time"]
    assert last.summary is not None and last.summary.text == "Let me check."
    assert [c.arguments for c in last.summary.tool_calls] == [c.arguments for c in last.tool_calls]


@pytest.mark.parametrize("format_", list(ANSWERS))
@pytest.mark.parametrize("name", [None, "weather"])
def test_the_required_call_grammar_admits_exactly_calls_of_the_tools(tmp_path, format_, name):
    pytest.importorskip("llguidance")
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from loraserve.handlers.tool_calls import tool_grammar
    from loraserve.testing.tiny import make_tokenizer

    make_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tools = (
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {"type": "function", "function": {"name": "time"}},
    )
    grammar = llguidance.grammar_from("lark", tool_grammar(tools, name, format_))
    key = "parameters" if format_ == "llama3_json" else "arguments"
    good = {"name": "weather", key: {"city": "Paris"}}
    written = {
        "hermes": f"<tool_call>\n{json.dumps(good, separators=(',', ':'))}\n</tool_call>",
        "mistral": f"[TOOL_CALLS]{json.dumps([good], separators=(',', ':'))}",
        "llama3_json": json.dumps(good, separators=(",", ":")),
    }[format_]
    bad = written.replace("weather", "wizard")

    def accepts(text):
        matcher = llguidance.LLMatcher(
            llguidance.hf.from_tokenizer(tokenizer, n_vocab=322), grammar, log_level=0
        )
        return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and matcher.is_accepting()

    assert accepts(written) and not accepts(bad)
    assert parse(written, format_)[1][0].name == "weather"
    with pytest.raises(BadRequestError, match="nope"):
        tool_grammar(tools, "nope", format_)
