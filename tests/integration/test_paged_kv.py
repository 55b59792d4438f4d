"""Issue 12 on a real (tiny) model: the paged KV cache computes a shared prefix once, never
shares blocks across adapters or adapter versions, preempts without changing greedy outputs,
and chunks a long prompt so running requests keep decoding."""

from __future__ import annotations

import random
import shutil

import pytest

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("paged")
    base = make_tiny_llama(root / "base", max_positions=4608)
    adapters = [make_peft_adapter(base, root / f"a{i}", rank=4, seed=i + 1) for i in range(3)]
    return root, base, adapters


def _engine(base, **kwargs) -> LLMEngine:
    options = {"max_model_len": 4608, "max_lora_rank": 8, "kv_cache_memory": "16MiB"} | kwargs
    return engine_with_adapters(base, {}, **options)


def _tokens(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(2, 300) for _ in range(length)]


def _run(engine: LLMEngine, requests, params=GREEDY) -> list[list[int]]:
    seqs = [engine.add_request(prompt, adapter, params) for prompt, adapter in requests]
    while engine.has_work():
        engine.step()
    assert all(seq.finish_reason == "length" for seq in seqs), [seq.error for seq in seqs]
    return [seq.output_ids for seq in seqs]


def _assert_released(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["lora_refs"] == stats["adapter_holds"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_a_shared_system_prompt_is_computed_once_and_outputs_do_not_change(files):
    _, base, adapters = files
    system = _tokens(0, 512)
    requests = [(system + _tokens(100 + i, 16), None if i % 4 == 0 else f"a{i % 4 - 1}") for i in range(32)]
    cached = _engine(base)
    uncached = _engine(base, enable_prefix_caching=False)
    for engine in (cached, uncached):
        for i, path in enumerate(adapters):
            engine.register_adapter(f"a{i}", path)
    expected = _run(uncached, requests)
    assert _run(cached, requests) == expected  # blocks read from the cache give the same tokens
    # the system prompt once per namespace (base + 3 adapters), each suffix once, 5 decodes each
    assert cached.computed_tokens == 4 * 512 + 32 * 16 + 32 * 5
    assert uncached.computed_tokens == 32 * (512 + 16) + 32 * 5
    assert cached.stats()["generated_tokens"] == 32 * 6  # every sampled token, as it is emitted
    assert cached.stats()["prefix_cache_hit_rate"] == pytest.approx(28 * 512 / (32 * 528))
    _assert_released(cached)


def test_two_adapters_with_the_same_prompt_never_share_blocks(files):
    _, base, adapters = files
    engine = _engine(base)
    engine.register_adapter("a0", adapters[0])
    engine.register_adapter("a1", adapters[1])
    prompt = _tokens(1, 100)
    first = engine.add_request(prompt, "a0", GREEDY)
    second = engine.add_request(prompt, "a1", GREEDY)
    base_seq = engine.add_request(prompt, None, GREEDY)
    engine.step()
    tables = [set(seq.block_table) for seq in (first, second, base_seq)]
    assert not (tables[0] & tables[1]) and not (tables[0] & tables[2]) and not (tables[1] & tables[2])
    while engine.has_work():
        engine.step()
    alone = _engine(base)
    alone.register_adapter("a1", adapters[1])
    assert second.output_ids == _run(alone, [(prompt, "a1")])[0]
    _assert_released(engine)


def test_re_registering_a_name_never_serves_blocks_of_the_old_weights(files, tmp_path):
    _, base, adapters = files
    engine = _engine(base)
    source = tmp_path / "adapter"
    shutil.copytree(adapters[0], source)
    engine.register_adapter("x", source)
    prompt = _tokens(2, 80)
    old_output = _run(engine, [(prompt, "x")])[0]
    running = engine.add_request(prompt, "x", GREEDY)  # admitted on the old version
    engine.step()
    shutil.rmtree(source)
    shutil.copytree(adapters[1], source)  # same name, different weights
    engine.register_adapter("x", source)
    new = engine.add_request(prompt, "x", GREEDY)
    while engine.has_work():
        engine.step()
    assert running.output_ids == old_output  # finished on its own version
    fresh = _engine(base)
    fresh.register_adapter("x", adapters[1])
    assert new.output_ids == _run(fresh, [(prompt, "x")])[0] != old_output
    assert engine.stats()["prefix_cache_hit_tokens"] >= 64  # the old version's own reuse did hit
    _assert_released(engine)


def test_preemption_under_a_tiny_budget_keeps_greedy_outputs(files):
    _, base, adapters = files
    requests = [(_tokens(10 + i, 40 + 5 * i), None if i % 2 else "a0") for i in range(8)]
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    roomy = _engine(base)
    tight = _engine(base, kv_cache_memory="96KiB", max_model_len=160, block_size=4)
    for engine in (roomy, tight):
        engine.register_adapter("a0", adapters[0])
    assert tight.stats()["kv_blocks_total"] < 8 * (75 + 30) // 4  # the batch cannot fit at once
    assert _run(tight, requests, params) == _run(roomy, requests, params)
    assert tight.stats()["preemptions"] > 0 and roomy.stats()["preemptions"] == 0
    _assert_released(tight)


def test_a_long_prompt_is_chunked_while_16_requests_keep_decoding(files):
    _, base, _ = files
    engine = _engine(base, max_num_batched_tokens=256)
    params = SamplingParams(max_new_tokens=60, ignore_eos=True)
    decoders = [engine.add_request(_tokens(200 + i, 20), None, params) for i in range(16)]
    while not all(seq.output_ids for seq in decoders):
        engine.step()
    long = engine.add_request(_tokens(7, 4000), None, SamplingParams(max_new_tokens=2, ignore_eos=True))
    steps = 0
    while not long.output_ids:
        before = [len(seq.output_ids) for seq in decoders]
        engine.step()
        steps += 1
        assert engine.last_step_tokens <= 256  # the step's work is bounded by the chunk budget
        assert [len(seq.output_ids) for seq in decoders] == [n + 1 for n in before]  # nobody stalls
    assert steps == -(-4000 // (256 - 16))
    while engine.has_work():
        engine.step()
    _assert_released(engine)


def test_a_budget_smaller_than_one_full_length_request_is_refused_at_start_up(files):
    _, base, _ = files
    from loraserve.errors import ConfigError

    with pytest.raises(ConfigError, match="raise the budget or lower max_model_len"):
        _engine(base, kv_cache_memory="96KiB", max_model_len=4096)
    with pytest.raises(ConfigError, match="kv_cache_memory"):
        _engine(base, kv_cache_memory="lots")
