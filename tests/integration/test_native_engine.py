"""The engine on the native ops agrees with the engine on the PyTorch ops, step by step, in fp32
and bf16; and every kernel entry point refuses bad input with a clear error, not a crash."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.engine.step_batch import build_step_batch
from loraserve.model import lora
from loraserve.model import runner as runner_module
from loraserve.model.layer_ops import NativeOps, TorchOps
from loraserve.model.native import cpu_kernels
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama


@pytest.fixture(scope="module", autouse=True)
def native_kernels() -> None:
    """Checked when the tests run, not at collection (which must not compile anything)."""
    if cpu_kernels() is None:
        pytest.skip("the native kernels could not be built here")


@pytest.fixture(scope="module")
def tiny_with_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base")
    adapters = [
        make_peft_adapter(base, root / "qv", rank=4),
        make_peft_adapter(base, root / "all", rank=8, target_modules="all-linear", seed=3),
    ]
    return base, adapters


def _engine(base, adapters, dtype: str) -> LLMEngine:
    named = {f"a{i}": path for i, path in enumerate(adapters)}
    return engine_with_adapters(base, named, dtype=dtype, max_model_len=64, max_lora_rank=8)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_native_lora_matches_pytorch_lora(tiny_with_adapters, dtype, monkeypatch):
    def first_logits() -> torch.Tensor:
        engine = _engine(*tiny_with_adapters, dtype)
        assert isinstance(engine.runner.ops, NativeOps)
        for name in (None, "a0", "a1", "a1"):
            engine.add_request("the quick brown", name)
        seqs = engine.scheduler.schedule()
        return engine.runner.forward(build_step_batch(seqs, engine.runner, merged=False))

    native = first_logits()
    # the PyTorch LoRA path (fp32 stacks, slot-grouped batched matmuls), the rest still native
    monkeypatch.setattr(runner_module, "lora_backend", lambda ops, *args: lora.TorchLora(*args))
    reference = first_logits()
    assert native.shape == reference.shape
    tolerance = 1e-4 if dtype == "fp32" else 0.05
    assert torch.allclose(native, reference, atol=tolerance * float(reference.abs().max()))
    assert not torch.allclose(reference[0], reference[2])  # the adapters do change the logits


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_native_steps_match_pytorch_steps(tiny_with_adapters, dtype):
    """Every step (prefills joining running decodes) through both ops classes on the same inputs:
    the PyTorch ops run first, then the native ones overwrite the same KV-cache entries."""
    engine = _engine(*tiny_with_adapters, dtype)
    runner = engine.runner
    native_forward, native_ops, native_layers = runner.forward, runner.ops, runner.decoder.native_layers
    torch_ops = TorchOps(runner.dtype, runner.args.rms_eps)
    compared, beyond = [], []

    def both(batch):  # records, not asserts: the engine fails the step's sequences on an error
        runner.decoder.ops, runner.decoder.native_layers = torch_ops, None
        reference = native_forward(batch)
        runner.decoder.ops, runner.decoder.native_layers = native_ops, native_layers
        logits = native_forward(batch)
        compared.append(batch.decode_count)
        # bf16: the PyTorch path rounds attention scores and probabilities to bf16, the kernel
        # keeps them in fp32: small differences, growing with the sequence, are expected.
        scale, diff = float(reference.abs().max()), (logits - reference).abs()
        worst, mean = (1e-4, 1e-5) if dtype == "fp32" else (0.05, 0.01)
        if float(diff.max()) > worst * scale or float(diff.mean()) > mean * scale:
            beyond.append((len(compared), float(diff.max()) / scale))
        return logits

    runner.forward = both
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    for name in (None, "a0"):
        engine.add_request("the quick brown fox", name, params)
    finished = engine.step()
    for name in ("a1", None):
        engine.add_request("hello world", name, params)
    while engine.has_work():
        finished += engine.step()
    assert compared[0] == 0 and compared[1] == 2 and max(compared) == 4  # prefill, mixed, decode
    assert not beyond and len(finished) == 4 and all(len(seq.output_ids) == 6 for seq in finished)


def _calls(dtype: torch.dtype):
    """Valid arguments of each entry point, built fresh for each bad variant."""
    f = {"dtype": dtype}
    return {
        "add_rms_norm": lambda: [
            torch.ones(2, 8, **f),
            None,
            torch.ones(8, **f),
            1e-5,
            torch.empty(2, 8, **f),
        ],
        "silu_mul": lambda: [torch.ones(2, 8, **f), torch.empty(2, 4, **f)],
        "gelu_tanh_mul": lambda: [torch.ones(2, 8, **f), torch.empty(2, 4, **f)],
        "qk_norm": lambda: [torch.ones(2, 16, **f), torch.ones(4, **f), torch.ones(4, **f), 2, 1, 1e-6],
        "rope_write_kv": lambda: [
            torch.ones(2, 4 * 4, **f),
            torch.ones(16, 4),
            torch.ones(16, 4),
            torch.tensor([0, 3]),
            torch.tensor([0, 1]),
            torch.zeros(2, 1, 8, 4, **f),
            torch.zeros(2, 1, 8, 4, **f),
            2,
            1,
        ],
        "decode_attention": lambda: [
            torch.ones(2, 2, 4, **f),
            torch.ones(3, 1, 8, 4, **f),
            torch.ones(3, 1, 8, 4, **f),
            torch.tensor([[0], [2]]),
            torch.tensor([1, 8]),
            torch.empty(2, 2, 4, **f),
            0.5,
            0,
            0.0,
            None,  # table_of: row r reads block_tables[r]
        ],
        "bgmv": lambda: [
            torch.ones(3, 8, **f),
            torch.tensor([-1, 0, 1]),
            torch.ones(2, 4, 8, **f),
            torch.ones(2, 2, 6, **f),
            torch.zeros(3, 6, **f),
            2,
            2,
            torch.tensor([0, 3]),
            torch.tensor([3, 3]),
            torch.tensor([[2, 3], [1, 1]]),
        ],
    }


BAD = [  # (entry point, argument index, a bad replacement for a dtype, what the error names)
    ("add_rms_norm", 0, lambda f: torch.ones(2, 8, dtype=torch.float16), "must be float32 or bfloat16"),
    ("add_rms_norm", 2, lambda f: torch.ones(7, dtype=f), "weight"),
    ("add_rms_norm", 4, lambda f: torch.empty(2, 8, dtype=torch.float64), "out must be"),
    ("silu_mul", 1, lambda f: torch.empty(2, 5, dtype=f), "gate_up must be"),
    ("gelu_tanh_mul", 1, lambda f: torch.empty(2, 5, dtype=f), "gelu_tanh_mul: gate_up must be"),
    ("gelu_tanh_mul", 0, lambda f: torch.ones(2, 8, dtype=torch.float16), "must be float32 or bfloat16"),
    ("qk_norm", 2, lambda f: torch.ones(3, dtype=f), "qk_norm: qkv must be"),
    ("qk_norm", 3, lambda f: 3, "qk_norm: qkv must be"),
    ("qk_norm", 1, lambda f: torch.ones(4, dtype=torch.float64), "q_w must be"),
    ("qk_norm", 0, lambda f: torch.ones(16, 2, dtype=f).t(), "qkv must have contiguous rows"),
    ("rope_write_kv", 3, lambda f: torch.tensor([0, 16]), "positions"),
    ("rope_write_kv", 4, lambda f: torch.tensor([0, 16]), "slot_mapping"),
    ("rope_write_kv", 4, lambda f: torch.tensor([-1, 0]), "slot_mapping"),
    ("rope_write_kv", 1, lambda f: torch.ones(16, 4, dtype=torch.float64), "cos"),
    ("decode_attention", 3, lambda f: torch.tensor([[0], [3]]), "block_tables"),
    ("decode_attention", 3, lambda f: torch.tensor([[0], [-1]]), "block_tables"),
    ("decode_attention", 3, lambda f: torch.tensor([[0], [2]], dtype=torch.int32), "block_tables"),
    ("decode_attention", 4, lambda f: torch.tensor([0, 8]), "lengths"),
    ("decode_attention", 4, lambda f: torch.tensor([1, 9]), "lengths"),
    ("decode_attention", 5, lambda f: torch.empty(2, 3, 4, dtype=f), "out must have"),
    ("decode_attention", 7, lambda f: -1, "window and softcap"),
    ("decode_attention", 8, lambda f: -2.0, "window and softcap"),
    ("decode_attention", 3, lambda f: torch.tensor([[0]]), "block_tables must be"),  # a table short
    ("decode_attention", 9, lambda f: torch.tensor([0, 2]), "table_of"),  # names a table not there
    ("decode_attention", 9, lambda f: torch.tensor([0]), "table_of"),  # one row without a table
    ("decode_attention", 9, lambda f: torch.tensor([0, -1]), "table_of"),
    ("rope_write_kv", 1, lambda f: torch.ones(16, 6), "cos/sin"),
    ("bgmv", 1, lambda f: torch.tensor([-1, 0, 2]), "slots"),
    ("bgmv", 1, lambda f: torch.tensor([-2, 0, 1]), "slots"),
    ("bgmv", 2, lambda f: torch.ones(2, 5, 8, dtype=f), "A must be"),
    ("bgmv", 4, lambda f: torch.zeros(3, 6, dtype=torch.float16), "out must be"),
    ("bgmv", 8, lambda f: torch.tensor([3, 4]), "columns"),
    ("bgmv", 9, lambda f: torch.tensor([[2, 3], [1, 4]]), "slot_info"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "index", "bad", "message"), BAD)
def test_entry_points_refuse_bad_input(dtype, name, index, bad, message):
    kernels = cpu_kernels()
    getattr(kernels, name)(*_calls(dtype)[name]())  # the valid call runs
    args = _calls(dtype)[name]()
    args[index] = bad(dtype)
    with pytest.raises(RuntimeError, match=message):
        getattr(kernels, name)(*args)
