"""Engine behaviour on a tiny model: waiting, sampling, stops, adapter lifecycle and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraserve.engine import SamplingParams
from loraserve.errors import AdapterNotFoundError, BadRequestError, ConfigError
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviour")
    base = make_tiny_llama(root / "base")
    return (
        root,
        base,
        make_peft_adapter(base, root / "qv", rank=4),
        make_peft_adapter(base, root / "all", rank=8, target_modules="all-linear", seed=5),
    )


def _engine(base, **kwargs):
    return engine_with_adapters(base, {}, **({"max_model_len": 64, "max_lora_rank": 8} | kwargs))


def test_requests_wait_for_kv_slots_and_all_finish(files):
    _, base, qv, _ = files
    engine = _engine(base, max_rolling_batch_size=2, max_loras=1)
    engine.register_adapter("qv", qv)
    engine.register_adapter("qv2", qv)
    prompts = ["the quick", "hello", "lora", "dog", "fox"]
    names = [None, "qv", "qv2", "qv", None]
    results = engine.generate(prompts, names, GREEDY)
    assert all(r.finish_reason == "length" and len(r.token_ids) == 10 for r in results)
    alone = [engine.generate([p], [n], GREEDY)[0].token_ids for p, n in zip(prompts, names)]
    assert [r.token_ids for r in results] == alone


def test_seeded_sampling_is_reproducible_and_stops_apply(files):
    _, base, _, _ = files
    engine = _engine(base)
    params = SamplingParams(
        max_new_tokens=12,
        do_sample=True,
        temperature=1.5,
        top_k=20,
        top_p=0.9,
        seed=42,
        ignore_eos=True,
        repetition_penalty=1.2,
    )
    first = engine.generate(["the quick"] * 2, None, params)
    again = engine.generate(["the quick"], None, params)[0]
    assert first[0].token_ids == first[1].token_ids == again.token_ids
    greedy = engine.generate(["the quick"], None, GREEDY)[0]
    stop = greedy.text[3:6]
    stopped = engine.generate(
        ["the quick"], None, SamplingParams(max_new_tokens=10, ignore_eos=True, stop=[stop])
    )[0]
    assert stopped.finish_reason == "stop_sequence" and stop not in stopped.text
    assert greedy.text.startswith(stopped.text)


def test_running_request_keeps_its_adapter_version(files):
    _, base, qv, all8 = files
    engine = _engine(base)
    engine.register_adapter("x", qv)
    expected_old = engine.generate(["hello"], ["x"], GREEDY)[0].token_ids
    seq = engine.add_request("hello", "x", GREEDY)
    engine.step()  # prefill on version 1
    engine.register_adapter("x", all8)  # update while it runs
    while engine.has_work():
        engine.step()
    assert seq.output_ids == expected_old
    assert engine.generate(["hello"], ["x"], GREEDY)[0].token_ids != expected_old


def test_unregister_frees_memory(files):
    _, base, _, all8 = files
    engine = _engine(base, max_loras=2)
    engine.register_adapter("a", all8)
    engine.generate(["hello"], ["a"], GREEDY)
    assert engine.memory_stats()["adapter_cpu_bytes"] > 0
    assert any(bool(t.abs().sum()) for t in engine.runner.lora.a.values())
    engine.unregister_adapter("a")
    assert engine.memory_stats()["adapter_cpu_bytes"] == 0
    lora = engine.runner.lora
    assert not any(lora.users.values())  # no group runs a delta for the freed slot
    for info in getattr(lora, "slot_info", {}).values():  # native: the kernel reads no row of it
        assert not bool(info.abs().sum())
    if not hasattr(lora, "slot_info"):  # the PyTorch backend reads every slot: zeroed
        assert all(not bool(t.abs().sum()) for t in lora.a.values())
    with pytest.raises(AdapterNotFoundError):
        engine.add_request("hello", "a", GREEDY)


def _edited_adapter(src, dst, config_patch=None, key_patch=None):
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "adapter_config.json").read_text()) | (config_patch or {})
    (dst / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(src / "adapter_model.safetensors")
    if key_patch:
        tensors = key_patch(tensors)
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


def _poison(tensors, which, value):
    """One weight of the first matching tensor set to ``value`` (NaN/inf)."""
    key = next(k for k in sorted(tensors) if which in k)
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = value
    return tensors


@pytest.mark.parametrize(
    "config_patch,key_patch,fragment",
    [
        ({"use_dora": True}, None, "no lora_magnitude_vector"),
        ({"modules_to_save": ["lm_head"]}, None, "holds no lm_head"),
        ({"modules_to_save": ["classifier"]}, None, "modules_to_save"),
        ({"peft_type": "IA3"}, None, "IA3"),
        ({"r": 32}, None, "max_lora_rank"),
        (None, lambda t: {k: torch.zeros(4, 7) if "lora_A" in k else v for k, v in t.items()}, "shapes"),
        (None, lambda t: {k.replace("q_proj", "rotary"): v for k, v in t.items()}, "not a LoRA weight"),
        (None, lambda t: {k.replace("layers.0", "layers.9"): v for k, v in t.items()}, "layer 9"),
        (None, lambda t: {**t, "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)}, "lm_head"),
        (None, lambda t: {}, "match nothing"),
        ({"r": 0}, None, "r must be a positive integer"),
        ({"r": -4}, None, "r must be a positive integer"),
        ({"r": 4.5}, None, "r must be a positive integer"),
        ({"r": "4"}, None, "r must be a positive integer"),
        ({"r": True}, None, "r must be a positive integer"),
        ({"lora_alpha": "16"}, None, "lora_alpha must be a finite number"),
        ({"lora_alpha": float("nan")}, None, "lora_alpha must be a finite number"),
        ({"use_rslora": "yes"}, None, "use_rslora must be true or false"),
        (None, lambda t: _poison(t, "lora_B", float("nan")), "non-finite"),
        (None, lambda t: _poison(t, "lora_A", float("inf")), "non-finite"),
    ],
)
def test_unsupported_adapters_are_refused_by_name(tmp_path, files, config_patch, key_patch, fragment):
    _, base, qv, _ = files
    engine = _engine(base)
    bad = _edited_adapter(qv, tmp_path / "bad", config_patch, key_patch)
    with pytest.raises(BadRequestError, match=fragment):
        engine.register_adapter("bad", bad)
    assert "bad" not in engine.adapters.registered


def test_unsupported_architecture_and_missing_model(tmp_path, files):
    _, base, _, _ = files
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((base / "config.json").read_text()) | {"architectures": ["GPT2LMHeadModel"]}
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="supported: LlamaForCausalLM"):
        _engine(odd)
    with pytest.raises(ConfigError, match="does not exist"):
        _engine(tmp_path / "missing")


def test_too_long_requests_are_refused(files):
    _, base, _, _ = files
    with pytest.raises(BadRequestError, match="max_model_len"):
        _engine(base).add_request("hello", None, SamplingParams(max_new_tokens=500))


def test_a_slot_reused_by_a_smaller_adapter_reads_none_of_the_old_rows(files, tmp_path):
    """The native backend does not zero a freed slot (its kernel reads only the rows below the
    slot's rank, of the modules it targets): a rank-2 q,v adapter with a per-module rank put in
    the slot a rank-8 all-linear one left, while another rank-8 adapter keeps the step's largest
    rank at 8, answers exactly as in an engine that never held the big ones."""
    _, base, _, all8 = files
    small = make_peft_adapter(base, tmp_path / "small", rank=2, rank_pattern={"v_proj": 1}, seed=9)
    shared = _engine(base, max_loras=2, dtype="fp32")
    for name in ("big", "big2"):
        shared.register_adapter(name, all8)
    shared.register_adapter("small", small)
    shared.generate(["hello there"], ["big"], GREEDY)  # slot 0: rank-8 rows
    shared.generate(["hello there"], ["big2"], GREEDY)  # slot 1: rank 8 stays the step's largest
    after_big = shared.generate(["the quick brown fox"], ["small"], GREEDY)[0].token_ids  # into slot 0
    fresh = _engine(base, max_loras=2, dtype="fp32")
    fresh.register_adapter("small", small)
    assert after_big == fresh.generate(["the quick brown fox"], ["small"], GREEDY)[0].token_ids
    base_only = fresh.generate(["the quick brown fox"], [None], GREEDY)[0].token_ids
    assert after_big != base_only  # the small adapter really changes the output
