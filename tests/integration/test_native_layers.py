"""The native layer stack (one C++ call per decode step) computes the same bits as the decoder's
Python loop over the same kernels, covers only the steps it can, and refuses bad input."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.model.batch import StepBatch
from loraserve.model.int4 import q4_available
from loraserve.model.int8 import int8_available
from loraserve.model.layer_ops import TorchOps
from loraserve.model.matrix_formats import MatrixFormat
from loraserve.model.native import cpu_kernels
from loraserve.model.native_layers import NativeLayers
from loraserve.model.quantized import QuantizedLinears
from loraserve.model.w8a8 import w8a8_available
from loraserve.testing.families import make_tiny_family
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter

CPU = torch.device("cpu")
FORMAT = {
    "q4": MatrixFormat.Q4_1,
    "q8": MatrixFormat.Q8_0,
    "int8": MatrixFormat.INT8,
    "w8a8": MatrixFormat.W8A8,
}


@pytest.fixture(scope="module", autouse=True)
def native_kernels() -> None:
    if cpu_kernels() is None:
        pytest.skip("the native kernels could not be built here")


@pytest.fixture(scope="module", params=["llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def family_model(request, tmp_path_factory):
    """Biases on every linear (llama3), a sliding window on every layer (mistral) and on some
    (qwen2), scaled RoPE, QK-norm (qwen3, gemma3), sandwich norms, GeGLU and soft-caps (gemma2,
    gemma3), partial rotary and fused projections (phi3): what the loop passes through to the
    kernels. Adapters: plain LoRA on q,v and on every linear, DoRA (rows rescaled where the layer
    has a bias, all rows where not) and trained biases (where the model has biases)."""
    root = tmp_path_factory.mktemp(request.param)
    base = make_tiny_family(root / "base", request.param)
    attention = ("qkv_proj",) if request.param == "phi3" else ("q_proj", "v_proj")  # phi3's are fused
    adapters = {
        "qv": make_peft_adapter(base, root / "qv", rank=4, target_modules=attention),
        "all": make_peft_adapter(base, root / "all", rank=2, target_modules="all-linear", seed=2),
        "dora": make_peft_adapter(base, root / "dora", rank=4, target_modules=attention, use_dora=True),
    }
    if request.param in ("llama3", "qwen2", "qwen3"):  # q and v have base biases: trained ones too
        adapters["bias"] = make_peft_adapter(base, root / "bias", rank=2, bias="lora_only", seed=4)
    return base, adapters


class BothPaths:
    """``runner.forward`` running every step through the Python loop first, then the native
    stack on the same inputs (it rewrites the same KV entries) where it takes the step. Records,
    not asserts: the engine fails the step's sequences on an error."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine, runner, decoder = engine, engine.runner, engine.runner.decoder
        native, forward = decoder.native_layers, runner.forward
        assert native is not None
        self.covered: list[StepBatch] = []
        self.python_only: list[StepBatch] = []
        self.differ: list[StepBatch] = []

        def both(batch: StepBatch) -> torch.Tensor:
            decoder.native_layers = None
            reference = forward(batch)
            decoder.native_layers = native
            if native.plan(batch, decoder.linears) is None:
                self.python_only.append(batch)
                return reference
            self.covered.append(batch)
            logits = forward(batch)
            if not torch.equal(logits, reference):
                self.differ.append(batch)
            return logits

        runner.forward = both

    def run(self, *names: str | None, tokens: int = 20) -> None:
        """One request per name, each prompt joining the running decodes, then to the end."""
        engine = self.engine
        params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)  # 20: past the window of 12
        for i, name in enumerate(names):
            engine.add_request("the quick brown fox"[: 5 + 4 * i], name, params)
            engine.step()
        while engine.has_work():
            engine.step()


# prompt attention: every span as rows of the paged kernel, in the stack (the default at these
# lengths); every span by SDPA, in the per-layer callback; or some each way
ROWS = {"paged": None, "sdpa": 0, "mixed": 10}  # mixed: the 3-token prompts as rows, not the 5


@pytest.mark.parametrize("rows", list(ROWS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_native_layers_equal_the_python_loop(family_model, dtype, rows, monkeypatch):
    """Logits equal bit for bit on every step: prompts (alone, and joining running decodes),
    decodes, with no adapter, plain LoRA, DoRA or trained biases, mixed in one batch."""
    base, adapters = family_model
    engine = engine_with_adapters(base, adapters, dtype=dtype, max_model_len=64, max_lora_rank=4)
    decoder, callbacks = engine.runner.decoder, []
    if ROWS[rows] is not None:
        decoder.rows_up_to = ROWS[rows]
    make_callback = decoder._prefill_callback
    monkeypatch.setattr(decoder, "_prefill_callback", lambda *a: callbacks.append(a) or make_callback(*a))
    paths = BothPaths(engine)
    paths.run(None, None)
    assert not paths.differ and not paths.python_only
    assert any(batch.prefills and batch.decode_count for batch in paths.covered)  # mixed
    paths.run("qv", None, "all")
    assert not paths.differ, [(batch.decode_count, len(batch.prefills)) for batch in paths.differ]
    with_lora = [batch for batch in paths.covered if batch.lora_plan is not None]
    assert len(with_lora) >= 15 and max(batch.decode_count for batch in with_lora) == 3
    assert any(batch.prefills and batch.decode_count for batch in with_lora) and not paths.python_only
    mixed = ("dora", "qv", None, "bias") if "bias" in adapters else ("dora", "qv", None)
    paths.run(*mixed, tokens=8)
    assert not paths.differ and not paths.python_only
    assert max(batch.decode_count for batch in paths.covered) == len(mixed)
    # rows attend in the stack; the per-layer callback runs only where SDPA takes a span
    assert (len(callbacks) > 0) == (rows != "paged")


QUANTIZED = {
    "q4": q4_available(CPU),
    "q8": True,  # the native kernels are built (the module's fixture)
    "int8": int8_available(CPU),
    "w8a8": w8a8_available(CPU),
}


@pytest.mark.parametrize("kind", list(QUANTIZED))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_native_layers_read_quantized_bases_as_the_python_loop(tmp_path, kind, dtype):
    """A quantized base (biases on every linear, so the stack adds them after a format's
    product as the loop does): one stream's steps read the format's kernel, a batch's the dense
    packed copies (or, w8a8, its GEMM at every row count), with LoRA on top; logits equal bit
    for bit, and every step is the stack's."""
    if not QUANTIZED[kind]:
        pytest.skip(f"no CPU {kind} kernel")
    base = make_tiny_family(tmp_path / "base", "llama3")
    adapter = make_peft_adapter(base, tmp_path / "all", rank=2, target_modules="all-linear")
    engine = engine_with_adapters(base, {"all": adapter}, dtype=dtype, max_model_len=64, quantize=kind)
    linears = engine.runner.linears
    assert isinstance(linears, QuantizedLinears)
    one_row = linears.native_matrices(1)
    assert one_row is not None and {fmt for fmt, _ in one_row} == {FORMAT[kind]}  # every matrix fits
    paths = BothPaths(engine)
    paths.run("all")  # one stream: its decodes read the format's kernel
    paths.run(None, "all", None)  # three rows: past q4's kernel, within q8's and int8's
    assert not paths.differ and not paths.python_only
    assert any(batch.input_ids.shape[0] == 1 for batch in paths.covered)
    assert any(batch.input_ids.shape[0] == 3 and batch.lora_plan is not None for batch in paths.covered)


def test_every_family_gets_the_stack_on_native_kernels_only(tmp_path):
    runner = engine_with_adapters(
        make_tiny_family(tmp_path / "gemma3", "gemma3"), {}, max_model_len=64
    ).runner
    assert runner.decoder.native_layers is not None  # QK-norm, sandwich norms, GeGLU
    args, weights, rope = runner.args, runner.weights, runner.rope
    torch_ops = TorchOps(runner.dtype, args.rms_eps)
    assert NativeLayers.build(args, weights, rope, torch_ops, runner.lora) is None


def _valid_call(layers: int = 2, dtype: torch.dtype = torch.float32) -> dict:
    """A two-layer stack of random weights, packed as the GEMM reads them, for two decodes."""
    from loraserve.model.packed import pack_for_gemm

    hidden, heads, kv_heads, d, inter, blocks, bs = 32, 2, 1, 16, 48, 4, 8

    def packed(n: int, k: int) -> list[torch.Tensor]:
        return [pack_for_gemm(torch.randn(n, k, dtype=dtype))]

    shapes = [((heads + 2 * kv_heads) * d, hidden), (hidden, heads * d), (2 * inter, hidden), (hidden, inter)]

    cache = torch.zeros(layers, blocks, kv_heads, bs, d, dtype=dtype)
    return {
        "h": torch.randn(2, hidden, dtype=dtype),
        "norms": [torch.ones(hidden, dtype=dtype), torch.ones(hidden, dtype=dtype), None, None, None, None]
        * layers,
        "formats": [int(MatrixFormat.PACKED)] * (4 * layers),
        "matrices": [packed(n, k) for _ in range(layers) for n, k in shapes],  # qkv, o, gate_up, down
        "biases": [None] * (4 * layers),
        "cos": [torch.ones(64, d)] * layers,
        "sin": [torch.zeros(64, d)] * layers,
        "windows": [0] * layers,
        "k_cache": cache,
        "v_cache": cache.clone(),
        "positions": torch.tensor([3, 9]),
        "slot_mapping": torch.tensor([3, 17]),
        "block_tables": torch.tensor([[0, 0], [1, 2]]),
        "lengths": torch.tensor([4, 10]),
        "table_of": None,
        "heads": heads,
        "intermediate": inter,
        "gelu": False,
        "scale": d**-0.5,
        "softcap": 0.0,
        "eps": 1e-6,
        "lora_slots": None,  # no adapter: the LoRA arguments stay empty
        "lora_a": [None] * (4 * layers),
        "lora_b": [None] * (4 * layers),
        "lora_starts": [None] * 4,
        "lora_widths": [None] * 4,
        "lora_info": [None] * 4,
        "lora_rank": 0,
        "dora": [None] * 4,
        "dora_rows": [None] * 4,
        "bias_deltas": [None] * 4,
        "decodes": 2,
        "prefill": None,
    }


def _with_lora(call: dict, slots: list[int]) -> dict:
    """The call with a rank-4 adapter on layer 0's q, k and v in two slots, tokens on ``slots``."""
    dtype, rank = call["h"].dtype, 4
    call["lora_slots"] = torch.tensor(slots)
    call["lora_a"] = _replaced(call["lora_a"], 0, torch.randn(2, 3 * rank, 32, dtype=dtype))
    call["lora_b"] = _replaced(call["lora_b"], 0, torch.randn(2, rank, 64, dtype=dtype))
    call["lora_starts"] = _replaced(call["lora_starts"], 0, torch.tensor([0, 32, 48]))
    call["lora_widths"] = _replaced(call["lora_widths"], 0, torch.tensor([32, 16, 16]))
    call["lora_info"] = _replaced(call["lora_info"], 0, torch.tensor([[rank, 7], [rank, 7]]))
    call["lora_rank"] = rank
    return call


def _info_of_width_3(call: dict) -> list:
    """The call with an adapter, its slot_info a column too wide."""
    return _replaced(_with_lora(call, [0, 1])["lora_info"], 0, torch.ones(2, 3, dtype=torch.long))


def _qk_norms(call: dict, size: int) -> list:
    """Layer 0's q and k norm weights of ``size`` (the heads' d is 16), in the call's dtype."""
    weight = torch.ones(size, dtype=call["h"].dtype)
    return _replaced(_replaced(call["norms"], 2, weight), 3, weight)


def _replaced(entries: list, index: int, value: object) -> list:
    return [value if i == index else entry for i, entry in enumerate(entries)]


BAD = [  # (argument, a bad replacement, what the error names)
    ("dora", lambda c: c["dora"][:3], "four each"),
    ("dora", lambda c: [torch.ones(2, 3, 48), None, None, None], "DoRA group 0 needs its rows"),
    ("bias_deltas", lambda c: [None, torch.zeros(3, 3, 32), None, None], r"must be \(L, S \+ 1, out\)"),
    ("bias_deltas", lambda c: [None, torch.zeros(2, 3, 32), None, None], "need the token slots"),
    ("norms", lambda c: c["norms"][:6], "one entry per layer"),
    ("norms", lambda c: _replaced(c["norms"], 7, None), "layer 1 needs its two pre-norms"),
    ("norms", lambda c: _replaced(c["norms"], 2, torch.ones(16)), "needs both QK-norm weights"),
    ("norms", lambda c: _qk_norms(c, 15), "qk_norm: qkv must be"),
    ("biases", lambda c: c["biases"][:4], "one entry per layer"),
    ("k_cache", lambda c: c["k_cache"][0], "caches must be"),
    ("v_cache", lambda c: c["v_cache"][:, :3], "caches must be"),
    ("h", lambda c: c["h"].t(), "h must be"),
    ("matrices", lambda c: _replaced(c["matrices"], 1, c["matrices"][2]), "packed_gemm: w must be"),
    ("matrices", lambda c: c["matrices"][:4], "four matrices and biases per layer"),
    ("matrices", lambda c: [c["matrices"][0] * 2, *c["matrices"][1:]], "needs 1 tensors, got 2"),
    ("formats", lambda c: [7, *c["formats"][1:]], "unknown matrix format 7"),
    ("formats", lambda c: [int(MatrixFormat.Q8_0), *c["formats"][1:]], "needs 2 tensors"),
    ("intermediate", lambda c: 40, "packed_gemm: w must be"),
    ("slot_mapping", lambda c: torch.tensor([3, 32]), "slot_mapping"),
    ("block_tables", lambda c: torch.tensor([[0, 0], [1, 4]]), "block_tables"),
    ("positions", lambda c: torch.tensor([3, 64]), "positions"),
    ("lengths", lambda c: torch.tensor([4, 17]), "lengths"),
    ("heads", lambda c: 3, "packed_gemm: w must be"),
    ("lora_a", lambda c: c["lora_a"][:4], "LoRA stacks four per layer"),
    ("lora_a", lambda c: [torch.zeros(2, 4, 32), *c["lora_a"][1:]], "LoRA entry 0 needs"),
    ("lora_slots", lambda c: torch.tensor([0.0, 1.0]), "token slots must be a contiguous int64"),
    # the GEMM before each BGMV prefetches its slots' rows: it passes over slot 5, BGMV refuses it
    ("lora_slots", lambda c: _with_lora(c, [1, 5])["lora_slots"], r"slots\[1\] = 5 is outside"),
    ("lora_info", lambda c: _info_of_width_3(c), r"slot_info must be \(S, 2\)"),
    ("decodes", lambda c: 1, "with a prefill callback"),
    ("decodes", lambda c: 3, "decodes must be in"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "bad", "message"), BAD)
def test_decode_layers_refuses_bad_input(dtype, name, bad, message):
    kernels = cpu_kernels()
    call = _valid_call(dtype=dtype)
    delta = kernels.decode_layers(*call.values())  # the valid call runs
    assert delta.shape == call["h"].shape and bool(torch.isfinite(delta).all())
    adapted = kernels.decode_layers(*_with_lora(_valid_call(dtype=dtype), [1, -1]).values())
    assert bool(torch.isfinite(adapted).all())  # and with an adapter (its rows prefetched)
    call = _valid_call(dtype=dtype)
    call[name] = bad(call)
    with pytest.raises(RuntimeError, match=message):
        kernels.decode_layers(*call.values())


def test_the_prefill_callback_runs_once_a_layer_and_its_errors_propagate():
    """Row 0 decodes, row 1 is a prompt token: the callback attends it, in every layer."""
    kernels, calls = cpu_kernels(), []

    def one_decode(prefill) -> dict:
        call = _valid_call()
        call["block_tables"], call["lengths"] = call["block_tables"][:1], call["lengths"][:1]
        call["decodes"], call["prefill"] = 1, prefill
        return call

    call = one_decode(lambda layer, q, out: calls.append((layer, q.shape, out.shape)))
    kernels.decode_layers(*call.values())
    assert calls == [(0, (2, 2, 16), (2, 2, 16)), (1, (2, 2, 16), (2, 2, 16))]

    def broken(layer, q, out):
        raise ValueError(f"prefill attention failed in layer {layer}")

    call = one_decode(broken)
    with pytest.raises(ValueError, match="layer 0"):
        kernels.decode_layers(*call.values())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_request_gets_the_same_bits_whatever_shares_its_steps(tmp_path, dtype):
    """One request's tokens and log-probs, bit for bit, beside neighbours on its own adapter (its
    prompt tokens and decodes in shared LoRA tiles) and beside others on other adapters, the base
    and longer prompts (its own tiles; prompt spans on other attention paths)."""
    # 256 wide: the kernels' sums run over several chunks, where a different order would show
    base = make_tiny_family(tmp_path / "base", "qwen3", hidden=256, intermediate=384)
    adapters = {
        "qv": make_peft_adapter(base, tmp_path / "qv", rank=4, target_modules=("q_proj", "v_proj")),
        "all": make_peft_adapter(base, tmp_path / "all", rank=2, target_modules="all-linear", seed=2),
    }
    params = SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)

    def run(neighbours: list[tuple[str, str | None]]) -> tuple[list[int], list[float | None]]:
        engine = engine_with_adapters(base, adapters, dtype=dtype, max_model_len=64, max_lora_rank=4)
        if engine.runner.linears.gemm is None:  # type: ignore[attr-defined]
            pytest.skip("oneDNN runs the matrices here: its kernel choice may depend on the row count")
        engine.add_request(neighbours[0][0], neighbours[0][1], params)
        me = engine.add_request("the quick brown fox", "qv", params)
        for prompt, name in neighbours[1:]:
            engine.add_request(prompt, name, params)
        while engine.has_work():
            engine.step()
        return me.output_ids, me.logprobs

    same_adapter = run([("a fox", "qv")] * 6)
    others = run(
        [("hello world, this is", "all"), ("a", None), ("tiny tokenizer for tests 0123456789", "all")] * 2
    )
    assert same_adapter == others
