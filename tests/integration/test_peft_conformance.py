"""A PEFT conformance matrix: ``LoraConfig`` settings on a tiny Llama, each either served exactly
as PEFT computes it (greedy tokens equal, log-probabilities within 1e-3 in fp32, in a mixed batch
with base rows and another adapter, on the native ops, the PyTorch ops and merged) or refused at
registration with the field's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.errors import BadRequestError
from loraserve.model import runner as runner_module
from loraserve.model.layer_ops import TorchOps
from loraserve.testing.families import make_tiny_family
from loraserve.testing.reference import cached_greedy, engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter

pytestmark = pytest.mark.slow
NEW_TOKENS = 8

EXACT = {  # name: (make_peft_adapter arguments, adapter_config.json edits after saving; None drops)
    "alpha_absent": ({"rank": 8, "target_modules": "all-linear", "alpha": 8}, {"lora_alpha": None}),
    "patterns": (
        {
            "rank": 8,
            "target_modules": "all-linear",
            "rank_pattern": {"q_proj": 4, "model.layers.1.mlp.down_proj": 2, "v_proj": 16},
            "alpha_pattern": {"o_proj": 64, "layers.0.mlp.up_proj": 3},
        },
        {},
    ),
    "rslora_some_layers": (
        {
            "rank": 6,
            "target_modules": ["q_proj", "gate_proj"],
            "use_rslora": True,
            "layers_to_transform": [0, 2],
        },
        {},
    ),
    "dora": ({"rank": 4, "target_modules": "all-linear", "use_dora": True}, {}),
    "dora_patterns": (
        {
            "rank": 8,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "use_dora": True,
            "rank_pattern": {"v_proj": 2},
            "use_rslora": True,
        },
        {},
    ),
    "lm_head_lora": ({"rank": 4, "target_modules": ["q_proj", "lm_head"]}, {}),
    "embed_lora": ({"rank": 4, "target_modules": ["v_proj", "embed_tokens"]}, {}),
    "modules_to_save": (
        {"rank": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head", "embed_tokens"]},
        {},
    ),
    "trainable_tokens": (
        {"rank": 4, "target_modules": ["q_proj"], "trainable_token_indices": [3, 7, 31, 45, 60]},
        {},
    ),
    "bdlora": (
        {
            "rank": 4,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
            "use_bdlora": {
                "target_modules_bd_a": ["o_proj", "down_proj"],
                "target_modules_bd_b": ["q_proj", "k_proj", "v_proj", "up_proj"],
                "nblocks": 2,
            },
        },
        {},
    ),
    "exclude_gaussian": (
        {"rank": 4, "target_modules": "all-linear", "exclude_modules": ["k_proj"], "bias": "none"},
        {"init_lora_weights": "gaussian"},
    ),
}
REFUSED = {  # the field set in adapter_config.json → what the refusal must name
    "modules_to_save": (["score"], "modules_to_save"),
    "use_bdlora": ({"block_size": 2}, "use_bdlora"),
    "init_lora_weights": ("pissa_niter_4", "path_initial_model_for_weight_conversion"),
    "alora_invocation_tokens": ([], "alora_invocation_tokens"),
    "trainable_token_indices": ([3, 4], "trainable_token_indices"),
    "lora_bias": (True, "lora_bias"),
    "use_qalora": (True, "use_qalora"),
    "a_field_from_a_future_peft": (1, "a_field_from_a_future_peft"),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("conformance")
    base = make_tiny_family(root / "base", "llama3")
    paths = {}
    for i, (name, (kwargs, edits)) in enumerate(EXACT.items()):
        paths[name] = make_peft_adapter(base, root / name, seed=10 + i, **kwargs)
        config_file = paths[name] / "adapter_config.json"
        config = json.loads(config_file.read_text())
        for key, value in edits.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        config_file.write_text(json.dumps(config))
    prompts = [[5, 9, 14, 3, 22, 7], list(range(30, 70))]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    refs = {None: [cached_greedy(model, p, NEW_TOKENS) for p in prompts]}
    for name, path in paths.items():  # each on a fresh base: PEFT reads the edited config as we do
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), path
        )
        refs[name] = [cached_greedy(peft_model, p, NEW_TOKENS) for p in prompts]
    assert len({tuple(r[1][0]) for r in refs.values()}) == len(refs), "each adapter must change the output"
    return base, paths, prompts, refs


def _engine(base: Path, paths: dict[str, Path], **options) -> LLMEngine:
    return engine_with_adapters(base, paths, max_loras=12, max_lora_rank=16, **options)


@pytest.mark.parametrize("mode", ["native", "torch", "merged"])
def test_exact_cases_match_peft(matrix, mode, monkeypatch):
    base, paths, prompts, refs = matrix
    if mode == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = _engine(base, paths, lora_merge=mode == "merged")
    rows = [(p, name) for p in range(len(prompts)) for name in [None, *paths]]
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True)
    results = engine.generate([prompts[p] for p, _ in rows], [n for _, n in rows], params)
    for (p, name), result in zip(rows, results):
        tokens, logprobs = refs[name][p]
        assert result.token_ids == tokens, (name, p)
        assert max(abs(a - b) for a, b in zip(result.logprobs, logprobs)) < 1e-3, (name, p)


@pytest.mark.parametrize("field", list(REFUSED))
def test_unserved_fields_are_refused_by_name(matrix, field, tmp_path):
    base, paths, _, _ = matrix
    value, named = REFUSED[field]
    adapter = tmp_path / field
    adapter.mkdir()
    source = paths["exclude_gaussian"]
    (adapter / "adapter_model.safetensors").write_bytes((source / "adapter_model.safetensors").read_bytes())
    config = json.loads((source / "adapter_config.json").read_text())
    config[field] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=16))
    with pytest.raises(BadRequestError, match=named):
        engine.register_adapter(field, adapter)


def test_a_module_named_twice_is_refused(matrix, tmp_path):
    """A file with a second tensor for one layer's module under another prefix: PEFT would read
    one of them, never a mix of both; refused rather than guessed."""
    from safetensors.torch import load_file, save_file

    base, paths, _, _ = matrix
    adapter = tmp_path / "twice"
    adapter.mkdir()
    source = paths["exclude_gaussian"]
    tensors = load_file(source / "adapter_model.safetensors")
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    tensors["other." + key] = tensors[key] * 2
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=16))
    with pytest.raises(BadRequestError, match="a second time"):
        engine.register_adapter("twice", adapter)


@pytest.mark.parametrize("mode", ["native", "merged"])
def test_vocabulary_adapters_on_a_tied_model(tmp_path, mode):
    """LoRA on embed_tokens and lm_head of a model whose head is its embedding (SmolLM2's case):
    each applies only where PEFT applies it, in a batch with base rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_tiny_family(tmp_path / "tied", "llama3", tie_word_embeddings=True)
    paths = {
        "vocab": make_peft_adapter(
            base, tmp_path / "vocab", rank=4, target_modules=["embed_tokens", "lm_head"], seed=4
        ),
        # retrained rows of a few tokens: in the embedding and, tied, in the head
        "tokens": make_peft_adapter(
            base,
            tmp_path / "tokens",
            rank=4,
            target_modules=["q_proj"],
            seed=5,
            trainable_token_indices=[5, 14, 40, 41, 42],
        ),
    }
    prompt = [5, 9, 14, 3, 22, 7]
    expected = {
        None: cached_greedy(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), prompt, NEW_TOKENS
        )[0]
    }
    for name, path in paths.items():
        fresh = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        expected[name] = cached_greedy(PeftModel.from_pretrained(fresh, path).eval(), prompt, NEW_TOKENS)[0]
        assert expected[name] != expected[None]
    engine = _engine(base, paths, lora_merge=mode == "merged")
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    names = ["vocab", None, "tokens", "vocab", "tokens"]
    results = engine.generate([prompt] * len(names), names, params)
    assert [r.token_ids for r in results] == [expected[n] for n in names]


@pytest.mark.parametrize("mode", ["native", "torch", "merged"])
def test_trained_biases_on_qwen2(tmp_path, mode, monkeypatch):
    """bias="all" (every bias of the model, k_proj's too though only q and v carry LoRA) and
    bias="lora_only", each exact against PEFT, in a batch with base rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_tiny_family(tmp_path / "qwen2", "qwen2")
    paths = {
        mode_: make_peft_adapter(
            base, tmp_path / mode_, rank=4, target_modules=["q_proj", "v_proj"], bias=mode_, seed=6
        )
        for mode_ in ("all", "lora_only")
    }
    prompt = list(range(20, 50))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    expected = {None: cached_greedy(model, prompt, NEW_TOKENS)[0]}
    for name, path in paths.items():
        fresh = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        expected[name] = cached_greedy(PeftModel.from_pretrained(fresh, path).eval(), prompt, NEW_TOKENS)[0]
    if mode == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = _engine(base, paths, lora_merge=mode == "merged")
    names = ["all", None, "lora_only", "all"]
    results = engine.generate(
        [prompt] * len(names), names, SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    )
    assert [r.token_ids for r in results] == [expected[n] for n in names]


def _peft_activated_greedy(peft_model, prompt: list[int], invocation: list[int], steps: int) -> list[int]:
    """PEFT's activated-LoRA generation, step by step: offsets from the prompt's last invocation,
    then every generated token with the adapter (what ``generate`` does)."""
    starts = [
        i for i in range(len(prompt) - len(invocation) + 1) if prompt[i : i + len(invocation)] == invocation
    ]
    offset = len(prompt) - starts[-1] if starts else None
    tokens, cache, ids = [], None, torch.tensor([prompt])
    with torch.no_grad():
        for step in range(steps):
            offsets = [offset] if step == 0 else [1 if offset is not None else None]
            out = peft_model(input_ids=ids, cache=cache, use_cache=True, alora_offsets=offsets)
            cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
            tokens.append(int(out.logits[0, -1].argmax()))
            ids = torch.tensor([[tokens[-1]]])
    return tokens


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_activated_lora(matrix, tmp_path, mode, monkeypatch):
    """alora_invocation_tokens: the adapter from the last invocation on (prompts with it once,
    twice, and not at all, in one batch with base rows), and a prefix shared by requests
    activated at different points never crosses between them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, _, _, _ = matrix
    invocation = [7, 8]
    path = make_peft_adapter(
        base,
        tmp_path / "alora",
        rank=4,
        target_modules="all-linear",
        seed=8,
        alora_invocation_tokens=invocation,
    )
    prompts = [
        list(range(20, 40)) + invocation + [50, 51, 52],
        [7, 8, *range(60, 80), 7, 8, 90],
        list(range(20, 45)),
        [*range(20, 40), 41, *invocation, 52],
    ]  # the first's prefix, activated later
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), path
    ).eval()
    expected = [_peft_activated_greedy(peft_model, p, invocation, NEW_TOKENS) for p in prompts]
    with peft_model.disable_adapter():
        plain = [cached_greedy(peft_model, p, NEW_TOKENS)[0] for p in prompts]
    assert expected[2] == plain[2] and expected[0] != plain[0], "activated only where invoked"
    if mode == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = _engine(base, {"alora": path})
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    for order in (prompts, prompts[::-1]):  # the second pass is served from the prefix cache
        results = engine.generate(order, ["alora"] * len(order), params)
        assert [r.token_ids for r in results] == [expected[prompts.index(p)] for p in order]
    merged = LLMEngine(
        EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=16, lora_merge=True)
    )
    with pytest.raises(BadRequestError, match="cannot be merged"):
        merged.register_adapter("alora", path)


def test_activated_lora_shares_its_base_prefix_with_base_requests(matrix, tmp_path):
    """The blocks an activated adapter computes before its invocation hold base-model KV: a base
    request reuses them and they reuse a base request's, and every output stays PEFT's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, _, _, _ = matrix
    invocation = [7, 8]
    path = make_peft_adapter(
        base,
        tmp_path / "alora",
        rank=4,
        target_modules="all-linear",
        seed=9,
        alora_invocation_tokens=invocation,
    )
    shared = list(range(20, 52))  # two full 16-token blocks before the invocation
    activated = [*shared, *invocation, 53, 54]
    plain = [*shared, 99, 98, 97]
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(), path
    ).eval()
    expected_activated = _peft_activated_greedy(peft_model, activated, invocation, NEW_TOKENS)
    with peft_model.disable_adapter():
        expected_plain = cached_greedy(peft_model, plain, NEW_TOKENS)[0]
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    for first, second in (((activated, "alora"), (plain, None)), ((plain, None), (activated, "alora"))):
        engine = _engine(base, {"alora": path}, block_size=16)
        engine.generate([first[0]], [first[1]], params)
        hits = engine.blocks.stats.hit_tokens
        result = engine.generate([second[0]], [second[1]], params)[0]
        assert engine.blocks.stats.hit_tokens - hits == len(shared)  # the base blocks, no more
        assert result.token_ids == (expected_activated if second[1] else expected_plain)
