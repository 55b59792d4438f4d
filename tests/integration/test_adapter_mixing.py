"""Per-request adapter scales and mixtures against PEFT's ``add_weighted_adapter`` (``cat``: the
exact sum of scaled deltas), in one batch with plain requests, on the native ops, the PyTorch ops
and merged; their prefix-cache namespaces; their bounds; nothing held afterwards."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.errors import AdapterNotFoundError, BadRequestError
from loraserve.model import runner as runner_module
from loraserve.model.layer_ops import TorchOps
from loraserve.testing.families import make_tiny_family
from loraserve.testing.reference import cached_greedy, engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter

pytestmark = pytest.mark.slow
NEW_TOKENS = 8
MIXTURES = {  # name: the request's adapters with scales
    "a_x0": (("a", 0.0),),
    "a_x05": (("a", 0.5),),
    "a_x1": (("a", 1.0),),
    "a_x2": (("a", 2.0),),
    "a_x05_b": (("a", 0.5), ("b", 1.0)),
    "a_b_x-05_c_x2": (("a", 1.0), ("b", -0.5), ("c", 2.0)),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("mixing")
    base = make_tiny_family(root / "base", "llama3")
    paths = {
        "a": make_peft_adapter(base, root / "a", rank=4, target_modules="all-linear", seed=1),
        "b": make_peft_adapter(base, root / "b", rank=8, target_modules=["q_proj", "v_proj"], seed=2),
        "c": make_peft_adapter(
            base, root / "c", rank=2, target_modules="all-linear", seed=3, use_rslora=True
        ),
    }
    prompts = [[5, 9, 14, 3, 22, 7], list(range(30, 70))]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    refs = {None: [cached_greedy(model, p, NEW_TOKENS) for p in prompts]}
    peft_model = PeftModel.from_pretrained(model, paths["a"], adapter_name="a")
    for name in ("b", "c"):
        peft_model.load_adapter(paths[name], adapter_name=name)
    for name, mixture in MIXTURES.items():
        names, scales = [n for n, _ in mixture], [s for _, s in mixture]
        peft_model.add_weighted_adapter(names, scales, name, combination_type="cat")
        peft_model.set_adapter(name)
        refs[name] = [cached_greedy(peft_model, p, NEW_TOKENS) for p in prompts]
    peft_model.set_adapter("a")
    refs["a"] = [cached_greedy(peft_model, p, NEW_TOKENS) for p in prompts]
    return base, paths, prompts, refs


def _engine(base, paths, **options) -> LLMEngine:
    return engine_with_adapters(base, paths, max_loras=8, block_size=8, **{"max_lora_rank": 16, **options})


@pytest.mark.parametrize("mode", ["native", "torch", "merged"])
def test_scales_and_mixtures_match_peft(setup, mode, monkeypatch):
    base, paths, prompts, refs = setup
    if mode == "torch":
        monkeypatch.setattr(runner_module, "select_ops", lambda dtype, device, eps: TorchOps(dtype, eps))
    engine = _engine(base, paths, lora_merge=mode == "merged")
    names = [None, "a", *MIXTURES]
    rows = [(p, name) for p in range(len(prompts)) for name in names]
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True)
    results = engine.generate([prompts[p] for p, _ in rows], [MIXTURES.get(n, n) for _, n in rows], params)
    for (p, name), result in zip(rows, results):
        tokens, logprobs = refs[name][p]
        assert result.token_ids == tokens, (name, p)
        assert max(abs(x - y) for x, y in zip(result.logprobs, logprobs)) < 1e-3, (name, p)
        if name == "a_x0":  # scale 0 is the base model, exactly
            assert result.token_ids == refs[None][p][0]
    stats = engine.stats()
    assert stats["lora_refs"] == 0 and stats["adapter_holds"] == 0


def test_prefix_cache_never_crosses_mixtures(setup):
    base, paths, prompts, _ = setup
    engine = _engine(base, paths)
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)
    long = prompts[1]

    def hits_after(adapter) -> int:
        engine.generate([long], [adapter], params)
        return engine.stats()["prefix_cache_hit_tokens"]

    first = hits_after((("a", 0.5), ("b", 1.0)))
    assert hits_after("a") == first, "a plain request must not hit a mixture's blocks"
    assert hits_after((("a", 0.5),)) == first, "another mixture must not hit them either"
    assert hits_after((("a", 0.5), ("b", 2.0))) == first, "nor the same adapters at other scales"
    assert hits_after((("b", 1.0), ("a", 0.5))) > first, "the same mixture, in any order, does"


def test_mixture_bounds(setup):
    base, paths, prompts, _ = setup
    engine = _engine(base, paths, max_adapters_per_request=2)
    dora = make_peft_adapter(base, base.parent / "dora", rank=2, use_dora=True, seed=9)
    engine.register_adapter("dora", dora)
    cases = [
        ((("a", 1.0), ("b", 1.0), ("c", 1.0)), BadRequestError, "1 to 2 adapters"),
        ((("a", float("nan")),), BadRequestError, "finite"),
        ((("a", 1.0), ("a", 0.5)), BadRequestError, "more than once"),
        ((("dora", 0.5),), BadRequestError, "DoRA"),
        ((("nope", 0.5),), AdapterNotFoundError, "nope"),
        ((("b", 1.0), ("a", 3.0)), None, None),
    ]
    for mixture, error, message in cases:
        if error is None:
            engine.generate([prompts[0]], [mixture], SamplingParams(max_new_tokens=1))
            continue
        with pytest.raises(error, match=message):
            engine.add_request(prompts[0], mixture)
    tight = _engine(base, paths, max_lora_rank=10)  # a (4) + b (8) = 12 > 10
    with pytest.raises(BadRequestError, match="max_lora_rank"):
        tight.add_request(prompts[0], (("a", 1.0), ("b", 0.5)))
    for each in (engine, tight):
        assert each.stats()["adapter_holds"] == 0
