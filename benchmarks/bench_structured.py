"""Structured output in the mixed batch on SmolLM2-135M: does a constrained row slow the others?

32 concurrent requests through ``LLMEngine`` directly: half free (greedy, ``ignore_eos``, a fixed
number of tokens), half constrained by a JSON schema (each one resubmitted when it ends, so the
constrained half stays full while the free half runs). Prints the free half's tok/s against
(a) the free half alone, same prompts and tokens, as asked; (b) a control where the other half
is free too, with exactly the token counts the constrained run produced: the same batch shape,
so the gap is the constraint's own cost. Also the constrained half's tok/s, the per-step mask
cost, the one-off tokenizer conversion and schema compile times, the ISA, and the load.

    python benchmarks/bench_structured.py [--batch 32] [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jsonschema

import loraserve.engine.engine as engine_module
from loraserve.constraints import OutputConstraint
from loraserve.engine import EngineConfig, LLMEngine, SamplingParams, sampler
from loraserve.model.default_model import smollm2_path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
TOPICS = ["a fox", "the sea", "a robot", "a city", "bread", "rain", "a violin", "the moon"]
PEOPLE = ["a baker", "a pilot", "a nurse", "a painter", "a farmer", "a coder", "a singer", "a judge"]


class Timer:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - began
            self.calls += 1


def chat(engine: LLMEngine, text: str) -> list[int]:
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return engine.tokenizer.encode(prompt)


def run(engine: LLMEngine, free: list[list[int]], other: list[list[int]], new: int, other_params) -> dict:
    """Free rows to ``new`` tokens while the other half is kept full (resubmitted as each ends);
    ``other_params(slot, round)`` gives each other-half request's parameters."""
    free_params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    free_seqs = [engine.add_request(p, None, free_params) for p in free]
    rounds = [0] * len(other)
    others = [engine.add_request(p, None, other_params(i, 0)) for i, p in enumerate(other)]
    lengths, texts, steps = {}, [], 0
    began = time.perf_counter()
    while any(s.finish_reason is None for s in free_seqs):
        engine.step()
        steps += 1
        for i, seq in enumerate(others):
            if seq.finish_reason is not None:
                lengths[i, rounds[i]] = len(seq.output_ids)
                texts.append(seq.text)
                rounds[i] += 1
                others[i] = engine.add_request(other[i], None, other_params(i, rounds[i]))
    elapsed = time.perf_counter() - began
    for i, seq in enumerate(others):
        lengths[i, rounds[i]] = len(seq.output_ids)
        engine.abort(seq.request_id)
    while engine.has_work():
        engine.step()
    return {
        "free_tok_s": sum(len(s.output_ids) for s in free_seqs) / elapsed,
        "other_tok_s": sum(lengths.values()) / elapsed,
        "seconds": elapsed,
        "steps": steps,
        "free_ids": [s.output_ids for s in free_seqs],
        "texts": texts,
        "lengths": lengths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case, best kept")
    opts = parser.parse_args()
    half, new = opts.batch // 2, opts.new_tokens
    engine = LLMEngine(
        EngineConfig(model_id=str(smollm2_path()), max_rolling_batch_size=opts.batch, max_model_len=512)
    )
    free = [chat(engine, f"Tell me a long story about {TOPICS[i % len(TOPICS)]}.") for i in range(half)]
    people = [
        chat(engine, f"Describe {PEOPLE[i % len(PEOPLE)]} as JSON: name, age, city, hobbies.")
        for i in range(half)
    ]
    constraint = OutputConstraint.json_schema(SCHEMA)

    began = time.perf_counter()
    engine.structured._llg_tokenizer()
    one_off = {"convert_ms": 1000 * (time.perf_counter() - began)}
    began = time.perf_counter()
    engine.compile_constraint(constraint)
    one_off["compile_ms"] = 1000 * (time.perf_counter() - began)
    masks = sampler._blocked = Timer(sampler._blocked)  # type: ignore[method-assign]
    sampling = engine_module.sample_tokens = Timer(engine_module.sample_tokens)  # type: ignore[assignment]

    def constrained(slot: int, _round: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=200, constraint=constraint)

    def best(other: list[list[int]], params) -> dict:
        """Best of --repeats runs, with the mask and sampling time per step of that run."""
        runs = []
        for _ in range(opts.repeats):
            masks.seconds = sampling.seconds = 0.0
            result = run(engine, free, other, new, params)
            result["mask_ms"] = 1000 * masks.seconds / result["steps"]
            result["sample_ms"] = 1000 * sampling.seconds / result["steps"]
            runs.append(result)
        return max(runs, key=lambda r: r["free_tok_s"])

    run(engine, free[:2], people[:2], 4, constrained)  # warm-up: kernels, caches
    alone = best([], constrained)
    mixed = best(people, constrained)
    lengths = mixed["lengths"]
    control = best(
        people,
        lambda slot, n: SamplingParams(max_new_tokens=max(lengths.get((slot, n), 200), 1), ignore_eos=True),
    )
    report(engine, opts, one_off, alone, control, mixed)


def report(engine: LLMEngine, opts, one_off: dict, alone: dict, control: dict, mixed: dict) -> None:
    half, valid = opts.batch // 2, sum(_valid(text) for text in mixed["texts"])
    print(
        f"SmolLM2-135M, {opts.batch} concurrent requests ({half} free, {half} JSON-schema), "
        f"{opts.new_tokens} free tokens each, best of {opts.repeats}"
    )
    print(f"{engine.info()}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    convert, compiled = one_off["convert_ms"], one_off["compile_ms"]
    print(f"one-off: tokenizer conversion {convert:.0f} ms, schema compile {compiled:.2f} ms")
    rows = [
        ("free half alone", alone),
        ("free half + free half (control)", control),
        ("free half + constrained half", mixed),
    ]
    for label, r in rows:
        print(
            f"{label:34s} {r['free_tok_s']:7.1f} tok/s   step {1000 * r['seconds'] / r['steps']:6.1f} ms   "
            f"sampling {r['sample_ms']:5.2f} ms/step  masks {r['mask_ms']:5.2f} ms/step (llguidance, unpack)"
        )
    print(
        f"constrained half                   {mixed['other_tok_s']:7.1f} tok/s   "
        f"({len(mixed['texts'])} finished, {valid} valid against the schema)"
    )
    print(f"ratio vs alone   {mixed['free_tok_s'] / alone['free_tok_s']:.3f}  (target >= 0.9)")
    ratio = mixed["free_tok_s"] / control["free_tok_s"]
    print(f"ratio vs control {ratio:.3f}  (same batch shape: the constraint's own cost)")
    print(f"free rows' tokens identical to alone: {mixed['free_ids'] == alone['free_ids']}")


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


if __name__ == "__main__":
    main()
