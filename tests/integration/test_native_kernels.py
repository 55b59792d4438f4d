"""The native CPU kernels (bf16) agree with the PyTorch path they replace."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.engine.step_batch import build_step_batch
from loraserve.model import lora
from loraserve.model.llama import LlamaArgs, RotaryEmbedding, rms_norm
from loraserve.model.native import cpu_kernels
from loraserve.model.peft_adapter import LoraWeights
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(cpu_kernels() is None, reason="the native kernels could not be built here")]


def _bf16(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).bfloat16()


def test_add_rms_norm_matches_pytorch():
    h, delta, weight = _bf16(7, 576, seed=1), _bf16(7, 576, seed=2), _bf16(576, seed=3)
    expected = rms_norm(h + delta, weight, 1e-5)
    out = torch.empty_like(h)
    residual = h.clone()
    cpu_kernels().add_rms_norm(residual, delta, weight, 1e-5, out)
    assert torch.equal(residual, h + delta)
    ulp = (expected.float().abs() * 2**-7).clamp(min=1e-6)  # one bf16 step
    assert bool(((out.float() - expected.float()).abs() <= ulp).all())
    assert (out != expected).float().mean() < 0.01  # summation order may move a rare rounding


def test_rope_write_kv_matches_pytorch():
    args = LlamaArgs(vocab_size=10, hidden_size=64, intermediate_size=8, num_layers=1, num_heads=4,
                     num_kv_heads=2, head_dim=16, rms_eps=1e-5, rope_theta=10000.0, max_position=64,
                     tie_word_embeddings=False, attention_bias=False)
    rope = RotaryEmbedding(args, torch.device("cpu"))
    qkv = _bf16(5, (4 + 2 + 2) * 16)
    positions, slots = torch.tensor([3, 0, 1, 2, 40]), torch.tensor([1, 0, 0, 0, 2])
    k_cache, v_cache = torch.zeros(3, 2, 64, 16).bfloat16(), torch.zeros(3, 2, 64, 16).bfloat16()
    cos, sin = rope.tables(positions, torch.bfloat16)
    expected = RotaryEmbedding.apply(qkv[:, :96].view(5, 6, 16), cos, sin)
    values = qkv[:, 96:].view(5, 2, 16).clone()
    cpu_kernels().rope_write_kv(qkv, rope.cos, rope.sin, positions, slots, k_cache, v_cache, 4, 2)
    assert torch.equal(qkv[:, :64].view(5, 4, 16), expected[:, :4])
    assert torch.equal(k_cache[slots, :, positions], expected[:, 4:])
    assert torch.equal(v_cache[slots, :, positions], values)


@pytest.mark.parametrize("dim", [16, 64, 128])  # 64 and 128 have their own vectorised path
def test_decode_attention_matches_reference(dim):
    batch, heads, kv_heads, length = 3, 6, 2, 20
    q = _bf16(batch, heads, dim, seed=4)
    k_cache, v_cache = _bf16(5, kv_heads, length, dim, seed=5), _bf16(5, kv_heads, length, dim, seed=6)
    slots, lengths = torch.tensor([4, 0, 2]), torch.tensor([20, 1, 7])
    out = torch.empty_like(q)
    cpu_kernels().decode_attention(q, k_cache, v_cache, slots, lengths, out, dim ** -0.5)
    for b in range(batch):
        keys = k_cache[slots[b], :, :lengths[b]].float().repeat_interleave(heads // kv_heads, 0)
        values = v_cache[slots[b], :, :lengths[b]].float().repeat_interleave(heads // kv_heads, 0)
        scores = torch.softmax(q[b].float()[:, None, :] @ keys.transpose(1, 2) * dim ** -0.5, dim=-1)
        expected = (scores @ values)[:, 0]
        assert torch.allclose(out[b].float(), expected, atol=2e-2, rtol=1e-2)


@pytest.fixture()
def tiny_with_adapters(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    adapters = [make_peft_adapter(base, tmp_path / "qv", rank=4),
                make_peft_adapter(base, tmp_path / "all", rank=8, target_modules="all-linear", seed=3)]
    return base, adapters


def _engine(base, adapters) -> LLMEngine:
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="bf16", max_model_len=64, max_lora_rank=8))
    for i, path in enumerate(adapters):
        engine.register_adapter(f"a{i}", path)
    return engine


def test_native_lora_matches_pytorch_lora(tiny_with_adapters, monkeypatch):
    def first_logits() -> torch.Tensor:
        engine = _engine(*tiny_with_adapters)
        for name in (None, "a0", "a1", "a1"):
            engine.add_request("the quick brown", name)
        decodes, prefills = engine.scheduler.schedule()
        return engine.runner.forward(build_step_batch(decodes, prefills, engine.runner, merged=False))

    native = first_logits()
    monkeypatch.setattr(lora, "kernels_for", lambda dtype, device: None)
    reference = first_logits()
    assert native.shape == reference.shape
    assert torch.allclose(native, reference, atol=0.05 * float(reference.abs().max()))
    assert not torch.allclose(reference[0], reference[2])  # the adapters do change the logits


def test_native_steps_match_pytorch_steps(tiny_with_adapters):
    """Every step (prefills joining running decodes) through both paths on the same inputs: the
    PyTorch path runs first, then the native one overwrites the same KV-cache entries."""
    engine = _engine(*tiny_with_adapters)
    runner = engine.runner
    native_forward, kernels = runner.forward, runner.kernels
    compared = []

    def both(batch):
        runner.kernels = None
        reference = native_forward(batch)
        runner.kernels = kernels
        logits = native_forward(batch)
        compared.append(batch.decode_slots.numel())
        # The PyTorch path rounds attention scores and probabilities to bf16, the kernel keeps
        # them in fp32: small differences, growing with the sequence, are expected.
        scale, diff = float(reference.abs().max()), (logits - reference).abs()
        assert float(diff.max()) <= 0.05 * scale and float(diff.mean()) <= 0.01 * scale, len(compared)
        return logits

    runner.forward = both
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    for name in (None, "a0"):
        engine.add_request("the quick brown fox", name, params)
    engine.step()
    for name in ("a1", None):
        engine.add_request("hello world", name, params)
    while engine.has_work():
        engine.step()
    assert compared[0] == 0 and compared[1] == 2 and max(compared) == 4  # prefill, mixed, decode


def test_silu_mul_matches_pytorch():
    gate_up = _bf16(9, 2 * 200, seed=7) * 4
    expected = torch.nn.functional.silu(gate_up[:, :200]) * gate_up[:, 200:]
    out = torch.empty(9, 200, dtype=torch.bfloat16)
    cpu_kernels().silu_mul(gate_up, out)
    ulp = (expected.float().abs() * 2**-7).clamp(min=1e-6)
    assert bool(((out.float() - expected.float()).abs() <= ulp).all())
    assert (out != expected).float().mean() < 0.01


def _random_lora(args: LlamaArgs, rank: int, modules: tuple[str, ...], seed: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(args.num_layers):
        for module in modules:
            fan_in, fan_out = args.module_shape(module)
            weights[(layer, module)] = (torch.randn(rank, fan_in, generator=generator),
                                        torch.randn(fan_out, rank, generator=generator))
    return LoraWeights(rank=rank, scaling=0.5, weights=weights)


def test_bgmv_reads_each_slots_own_rank_and_modules():
    """A slot reused by a smaller adapter on fewer modules gives exactly that adapter's delta:
    the kernel reads each slot's rank and modules, and a cleared slot keeps nothing behind."""
    args = LlamaArgs(vocab_size=10, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, rms_eps=1e-5, rope_theta=10000.0, max_position=64,
                     tie_word_embeddings=False, attention_bias=False)
    stacks = lora.LoraStacks(args, slots=3, rank=8, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert stacks.kernel is not None
    everything = (*lora.FUSED_GROUPS["qkv"], "down_proj")
    stacks.load(0, _random_lora(args, 8, everything, seed=1))
    big = _random_lora(args, 8, everything, seed=2)
    stacks.load(1, big)  # keeps the used rank at 8
    small = _random_lora(args, 2, ("q_proj", "v_proj"), seed=3)
    stacks.load(0, small)
    assert stacks.slot_info["qkv"][0].tolist() == [2, 0b101]
    assert stacks.slot_info["down"][0].tolist() == [0, 0]
    x = _bf16(11, 64, seed=9)
    # runs of one slot are tiled (up to 4 tokens share each read of the adapter's rows): 4+1, 1, 3
    slots = [0, 0, 0, 0, 0, -1, 0, 1, 1, 1, -1]
    out = torch.zeros(11, 128, dtype=torch.bfloat16)
    stacks.add_delta(out, x, 1, "qkv", lora.LoraPlan(torch.tensor(slots)))
    columns = {"q_proj": slice(0, 64), "k_proj": slice(64, 96), "v_proj": slice(96, 128)}

    def matches(adapter: LoraWeights, row: int, module: str) -> bool:
        a, b = adapter.weights[(1, module)]
        expected = (x[row].float() @ a.bfloat16().float().t()) @ (b.float().t() * 0.5).bfloat16().float()
        scale = float(expected.abs().max())
        return torch.allclose(out[row, columns[module]].float(), expected, atol=0.02 * scale, rtol=0.02)

    for row in (0, 1, 2, 3, 4, 6):
        assert matches(small, row, "q_proj") and matches(small, row, "v_proj")
        assert not out[row, 64:96].any()  # k_proj: not in this adapter, not left over from the last
    for row in (7, 8, 9):
        assert all(matches(big, row, module) for module in columns)
    assert not out[5].any() and not out[10].any() and bool(out[7:10].any(dim=1).all())
