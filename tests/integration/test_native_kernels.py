"""Every build of the native CPU kernels this CPU can run (AVX-512+BF16, AVX-512, AVX2, scalar)
agrees with the PyTorch path it replaces, in fp32 and bf16; the entry points refuse bad input.
Builds the CPU cannot run are skipped with that reason, so an AVX-512 machine also tests the AVX2
and scalar builds."""

from __future__ import annotations

import pytest
import torch

from loraserve.model import lora
from loraserve.model.args import SPLIT_LORA_GROUPS, ModelArgs
from loraserve.model.hardware import ISA_LEVELS, cpu_info
from loraserve.model.layer_ops import TorchOps, rms_norm
from loraserve.model.native import cpu_kernels
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.rope import apply_rope

DTYPES = [torch.float32, torch.bfloat16]
LANES = {"avx512_bf16": 16, "avx512": 16, "avx2": 8, "scalar": 1}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(
            level,
            marks=pytest.mark.skipif(
                not cpu_info().supports(level), reason=f"this CPU cannot run {level} code"
            ),
        )
        for level in ISA_LEVELS
    ],
)
def kernels(request):
    module = cpu_kernels(request.param)
    if module is None:
        pytest.skip("the native kernels could not be built here")
    assert module.vector_width() == LANES[request.param]  # the build really is that ISA's
    return module


def _rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """fp32: a few ulps (summation order); bf16: within one bf16 step, < 1% of elements moved."""
    if expected.dtype == torch.float32:
        return torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)
    ulp = (expected.float().abs() * 2**-7).clamp(min=1e-6)
    within = bool(((actual.float() - expected.float()).abs() <= ulp).all())
    return within and float((actual != expected).float().mean()) < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [576, 61])  # 61: the scalar tail after the vector loop
def test_add_rms_norm_matches_pytorch(kernels, dtype, width):
    h, delta = _rand(7, width, dtype=dtype, seed=1), _rand(7, width, dtype=dtype, seed=2)
    weight = _rand(width, dtype=dtype, seed=3)
    expected = rms_norm(h + delta, weight, 1e-5)
    out, residual = torch.empty_like(h), h.clone()
    kernels.add_rms_norm(residual, delta, weight, 1e-5, out)
    assert torch.equal(residual, h + delta)
    assert _close(out, expected)
    kernels.add_rms_norm(h, None, weight, 1e-5, out)  # no residual: the final norm
    assert _close(out, rms_norm(h, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_pytorch(kernels, dtype):
    gate_up = _rand(9, 2 * 203, dtype=dtype, seed=7) * 4
    expected = torch.nn.functional.silu(gate_up[:, :203]) * gate_up[:, 203:]
    out = torch.empty(9, 203, dtype=dtype)
    kernels.silu_mul(gate_up, out)
    assert _close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [128, 24])  # 24: the scalar tail after the vector loop
def test_qk_norm_matches_pytorch(kernels, dtype, d):
    """Each q head and k head normed with its own weight, in place; v left as it was. The fused
    rows are a view with a longer stride (a wider buffer), as a step's qkv can be."""
    heads, kv_heads, tokens = 4, 2, 11
    wide = _rand(tokens, (heads + 2 * kv_heads) * d + 8, dtype=dtype, seed=4) * 3
    qkv = wide[:, : (heads + 2 * kv_heads) * d]
    q_w, k_w = _rand(d, dtype=dtype, seed=5), _rand(d, dtype=dtype, seed=6)
    expected = qkv.clone()
    TorchOps(dtype, 1e-6).qk_norm(expected, q_w, k_w, heads, kv_heads)
    before = wide.clone()
    kernels.qk_norm(qkv, q_w, k_w, heads, kv_heads, 1e-6)
    assert _close(qkv, expected)
    assert torch.equal(wide[:, (heads + kv_heads) * d :], before[:, (heads + kv_heads) * d :])  # v, padding


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_mul_matches_pytorch(kernels, dtype):
    """GeGLU (Gemma): the tanh form of GELU computed as x * sigmoid(2u). Equal to torch's within
    rounding where torch's 0.5 x (1 + tanh u) is exact (gate > -3); below, 1 + tanh u cancels in
    torch's, and the kernel is the closer of the two to the exact value (float64, sigmoid form).
    Gates of +-200 saturate to 0 and to the gate itself."""
    gate_up = _rand(9, 2 * 203, dtype=dtype, seed=8) * 4
    gate_up[0, :2] = torch.tensor([-200.0, 200.0]).to(dtype)
    gate, up = gate_up[:, :203], gate_up[:, 203:]
    expected = torch.nn.functional.gelu(gate, approximate="tanh") * up
    out = torch.empty(9, 203, dtype=dtype)
    kernels.gelu_tanh_mul(gate_up, out)
    plain = gate > -3
    assert _close(out[plain], expected[plain])
    x = gate[~plain].double()
    exact = x * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)) * up[~plain].double()
    slack = exact.abs() * (2**-7 if dtype == torch.bfloat16 else 2**-20) + 1e-30
    ours, torchs = (out[~plain].double() - exact).abs(), (expected[~plain].double() - exact).abs()
    assert bool((ours <= torchs + slack).all()) and float(ours.sum()) < float(torchs.sum())
    assert abs(float(out[0, 0])) < 1e-30 and float(out[0, 1]) == float(expected[0, 1])


def _rope_tables(rotary: int, positions: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Default-RoPE cos/sin (P, rotary) fp32 tables."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("dim", "rotary"), [(16, 16), (64, 64), (16, 12), (64, 48)])  # partial rotary too
def test_rope_write_kv_matches_pytorch(kernels, dtype, dim, rotary):
    cos_table, sin_table = _rope_tables(rotary)
    qkv = _rand(5, 8 * dim, dtype=dtype)
    positions = torch.tensor([3, 0, 1, 2, 40])
    slot_mapping = torch.tensor([1 * 4 + 3, 5 * 4, 5 * 4 + 1, 2 * 4 + 2, 6 * 4])  # block * bs + offset
    k_cache, v_cache = torch.zeros(7, 2, 4, dim, dtype=dtype), torch.zeros(7, 2, 4, dim, dtype=dtype)
    cos, sin = cos_table[positions].unsqueeze(1).to(dtype), sin_table[positions].unsqueeze(1).to(dtype)
    expected = apply_rope(qkv[:, : 6 * dim].view(5, 6, dim), cos, sin)
    values = qkv[:, 6 * dim :].view(5, 2, dim).clone()
    kernels.rope_write_kv(qkv, cos_table, sin_table, positions, slot_mapping, k_cache, v_cache, 4, 2)
    same = torch.equal if dtype == torch.bfloat16 else lambda a, b: torch.allclose(a, b, atol=1e-6)
    assert same(qkv[:, : 4 * dim].view(5, 4, dim), expected[:, :4])
    blocks, offsets = slot_mapping // 4, slot_mapping % 4
    assert same(k_cache[blocks, :, offsets], expected[:, 4:])
    assert torch.equal(v_cache[blocks, :, offsets], values)
    assert int((k_cache != 0).any(-1).sum()) == 5 * 2  # nothing written elsewhere


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [16, 20, 64, 128])  # 20: a vector tail; 64/128: register paths
@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (5, 0.0), (11, 2.0)])  # window, Gemma 2 cap
# (block size, heads, KV heads): 16-token blocks take the 16-keys-at-once scores; 3, 5, 2 and 4
# heads a KV head: the value passes take 4 heads at most (2 at d = 128), so 5 is two passes
@pytest.mark.parametrize(("block_size", "heads", "kv_heads"), [(8, 6, 2), (16, 10, 2), (16, 8, 4), (8, 4, 1)])
def test_decode_attention_matches_reference(
    kernels, dtype, dim, window, softcap, block_size, heads, kv_heads
):
    lengths = torch.tensor([20, 1, 7]) if block_size == 8 else torch.tensor([40, 17, 7])
    tables = torch.tensor([[4, 8, 1], [7, 0, 0], [2, 0, 0]])  # scattered blocks, 0-padded
    _check_decode_attention(
        kernels, dtype, dim, window, softcap, block_size, heads, kv_heads, tables, lengths
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_past_the_prefetched_blocks(kernels, dtype):
    """Sequences longer than the blocks prefetched ahead of a unit (512 KB: 64 blocks of 16 x 128
    bf16 keys and values), beside short ones, each with its own scattered blocks: the same
    attention as the reference."""
    blocks = 80
    order = torch.randperm(3 * blocks, generator=torch.Generator().manual_seed(7))
    tables = order.view(3, blocks)
    lengths = torch.tensor([blocks * 16, 3, blocks * 16 - 5])
    _check_decode_attention(kernels, dtype, 128, 0, 0.0, 16, 4, 2, tables, lengths)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (5, 0.0), (0, 3.0)])
def test_decode_attention_rows_sharing_a_table(kernels, dtype, window, softcap):
    """Rows that name their block table by ``table_of`` (a prompt's tokens share its span's) give
    the bits of the same rows each with its own copy of the table, and match the reference."""
    tables = torch.tensor([[4, 8, 1], [7, 3, 0], [2, 0, 0]])
    table_of = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    lengths = torch.tensor([18, 19, 9, 10, 11, 2, 20])
    q = _rand(7, 6, 64, dtype=dtype, seed=4)
    k_cache = _rand(9, 2, 8, 64, dtype=dtype, seed=5)
    v_cache = _rand(9, 2, 8, 64, dtype=dtype, seed=6)
    shared, copied = torch.empty_like(q), torch.empty_like(q)
    kernels.decode_attention(q, k_cache, v_cache, tables, lengths, shared, 0.125, window, softcap, table_of)
    own = tables[table_of].contiguous()
    kernels.decode_attention(q, k_cache, v_cache, own, lengths, copied, 0.125, window, softcap, None)
    assert torch.equal(shared, copied)
    _check_decode_attention(kernels, dtype, 64, window, softcap, 8, 6, 2, own, lengths)


def _check_decode_attention(
    kernels, dtype, dim, window, softcap, block_size, heads, kv_heads, tables, lengths
):
    """decode_attention over the blocks `tables` names against softmax(q k^T) v in fp32."""
    batch = tables.shape[0]
    q = _rand(batch, heads, dim, dtype=dtype, seed=4)
    num_blocks = int(tables.max()) + 1
    k_cache = _rand(num_blocks, kv_heads, block_size, dim, dtype=dtype, seed=5)  # (N, kvh, bs, d)
    v_cache = _rand(num_blocks, kv_heads, block_size, dim, dtype=dtype, seed=6)
    out = torch.empty_like(q)
    kernels.decode_attention(q, k_cache, v_cache, tables, lengths, out, dim**-0.5, window, softcap, None)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}

    def sequence(cache, b):  # (kvh, length, d) in token order, repeated for each query head
        rows = cache[tables[b]].transpose(0, 1).reshape(kv_heads, -1, dim)[:, : lengths[b]]
        return rows.float().repeat_interleave(heads // kv_heads, 0)

    for b in range(batch):
        keys, values = sequence(k_cache, b), sequence(v_cache, b)
        scores = q[b].float()[:, None, :] @ keys.transpose(1, 2) * dim**-0.5  # (H, 1, L)
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        if window:  # transformers: key j for the query at i when j > i - window
            scores[..., : max(0, int(lengths[b]) - window)] = float("-inf")
        scores = torch.softmax(scores, dim=-1)
        expected = (scores @ values)[:, 0]
        assert torch.allclose(out[b].float(), expected, **tolerance)


def _lora_args(hidden: int, layers: int) -> ModelArgs:
    """A Llama shape for the BGMV tests: 4 heads (2 KV) of hidden / 4, intermediate 96."""
    return ModelArgs(
        architecture="LlamaForCausalLM",
        vocab_size=10,
        hidden_size=hidden,
        intermediate_size=96,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=hidden // 4,
        rms_eps=1e-5,
        max_position=64,
        tie_word_embeddings=False,
    )


def _random_lora(args: ModelArgs, rank: int, modules: tuple[str, ...], seed: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(args.num_layers):
        for module in modules:
            fan_in, fan_out = args.module_shape(module)
            weights[(layer, module)] = (
                torch.randn(rank, fan_in, generator=generator),
                torch.randn(fan_out, rank, generator=generator),
            )
    return LoraWeights(rank=rank, scalings=dict.fromkeys(weights, 0.5), weights=weights)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bgmv_reads_each_slots_own_rank_and_modules(kernels, dtype):
    """A slot reused by a smaller adapter on fewer modules gives exactly that adapter's delta:
    the kernel reads each slot's rank and modules, and a cleared slot keeps nothing behind."""
    args = _lora_args(hidden=64, layers=2)
    stacks = lora.NativeLora(
        args, slots=3, rank=8, dtype=dtype, device=torch.device("cpu"), kernel=kernels.bgmv
    )
    everything = (*SPLIT_LORA_GROUPS["qkv"], "down_proj")
    stacks.load(0, _random_lora(args, 8, everything, seed=1))
    big = _random_lora(args, 8, everything, seed=2)
    stacks.load(1, big)  # keeps the used rank at 8
    small = _random_lora(args, 2, ("q_proj", "v_proj"), seed=3)
    stacks.load(0, small)
    assert stacks.slot_info["qkv"][0].tolist() == [2, 0b101]
    assert stacks.slot_info["down"][0].tolist() == [0, 0]
    x = _rand(11, 64, dtype=dtype, seed=9)
    # runs of one slot are tiled (up to 4 tokens share each read of the adapter's rows): 4+1, 1, 3
    slots = [0, 0, 0, 0, 0, -1, 0, 1, 1, 1, -1]
    out = torch.zeros(11, 128, dtype=dtype)
    stacks.add_delta(out, x, 1, "qkv", stacks.plan(slots, []))
    columns = {"q_proj": slice(0, 64), "k_proj": slice(64, 96), "v_proj": slice(96, 128)}
    tolerance = 1e-5 if dtype == torch.float32 else 0.02

    def matches(adapter: LoraWeights, row: int, module: str) -> bool:
        a, b = adapter.weights[(1, module)]
        expected = (x[row].float() @ a.to(dtype).float().t()) @ (b.float().t() * 0.5).to(dtype).float()
        scale = float(expected.abs().max())
        return torch.allclose(
            out[row, columns[module]].float(), expected, atol=tolerance * scale, rtol=tolerance
        )

    for row in (0, 1, 2, 3, 4, 6):
        assert matches(small, row, "q_proj") and matches(small, row, "v_proj")
        assert not out[row, 64:96].any()  # k_proj: not in this adapter, not left over from the last
    for row in (7, 8, 9):
        assert all(matches(big, row, module) for module in columns)
    assert not out[5].any() and not out[10].any() and bool(out[7:10].any(dim=1).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_bgmv_gives_a_token_the_same_bits_whatever_shares_its_tile(kernels, dtype):
    """Tokens of one slot share a tile (one read of the adapter's rows for up to four): a token's
    delta must not depend on whether its neighbours in the step use its adapter."""
    args = _lora_args(hidden=320, layers=1)
    stacks = lora.NativeLora(
        args, slots=2, rank=16, dtype=dtype, device=torch.device("cpu"), kernel=kernels.bgmv
    )
    stacks.load(0, _random_lora(args, 16, SPLIT_LORA_GROUPS["qkv"], seed=1))
    stacks.load(1, _random_lora(args, 16, SPLIT_LORA_GROUPS["qkv"], seed=2))
    x = _rand(64, 320, dtype=dtype, seed=9) * 4
    out_width = int(stacks.columns["qkv"][1].sum())  # q, k and v side by side

    def deltas(slots: list[int]) -> torch.Tensor:
        out = torch.zeros(64, out_width, dtype=dtype)
        stacks.add_delta(out, x, 0, "qkv", stacks.plan(slots, []))
        return out

    together = deltas([0] * 64)  # tiles of four
    apart = deltas([0, 1] * 32)  # tiles of one
    assert torch.equal(together[0::2], apart[0::2])
    assert torch.equal(deltas([1, 0] * 32)[1::2], together[1::2])


# (fp32, bf16) in register tiles, per build
TILED = {
    "avx512_bf16": (True, True),
    "avx512": (True, False),
    "avx2": (False, False),
    "scalar": (False, False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("rows", "n", "k"),
    [(1, 960, 576), (3, 37, 61), (7, 64, 200), (13, 48, 130), (32, 80, 96), (70, 200, 1536)],
)
def test_packed_gemm_is_the_linear_and_batch_invariant(kernels, dtype, rows, n, k):
    """The packed GEMM (tiles of up to 6 rows x 64 channels, remainders in rows and channels, odd
    K) gives F.linear's product with the bias, within fp32 summation error and one rounding, and
    every row the same bits whether it comes alone or in a batch."""
    from loraserve.model.packed import pack_for_gemm

    x = _rand(rows, k, dtype=dtype, seed=1)
    weight, bias = _rand(n, k, dtype=dtype, seed=2), _rand(n, dtype=dtype, seed=3)
    packed = pack_for_gemm(weight)
    for with_bias in (None, bias):
        out = torch.empty(rows, n, dtype=dtype)
        kernels.packed_gemm(x, packed, with_bias, out)
        shift = torch.zeros(n, dtype=torch.float64) if with_bias is None else with_bias.double()
        exact = x.double() @ weight.double().T + shift
        bound = x.double().abs() @ weight.double().abs().T + shift.abs()
        step = 2**-8 if dtype == torch.bfloat16 else 2**-18  # one bf16 rounding; fp32 sums over K
        assert bool(((out.double() - exact).abs() <= bound * step + 1e-6).all())
        if dtype == torch.bfloat16:  # fp32: one sum in k order, off F.linear's by its summation error
            assert _close(out, torch.nn.functional.linear(x, weight, with_bias))
        for row in {0, rows // 2, rows - 1}:  # alone, the same bits
            alone = torch.empty(1, n, dtype=dtype)
            kernels.packed_gemm(x[row : row + 1], packed, with_bias, alone)
            assert torch.equal(alone[0], out[row])
    poisoned = x.clone()
    poisoned[-1, k // 2] = float("nan")
    out = torch.empty(rows, n, dtype=dtype)
    kernels.packed_gemm(poisoned, packed, None, out)
    assert bool(out[-1].isnan().all()) and not bool(out[:-1].isnan().any())
    empty = torch.empty(0, n, dtype=dtype)  # a step without tokens
    kernels.packed_gemm(x[:0], packed, bias, empty)
    with pytest.raises(RuntimeError, match="w must be"):
        kernels.packed_gemm(x[:, : k - 2].contiguous(), packed, None, out)
    with pytest.raises(RuntimeError, match="bias must be"):
        kernels.packed_gemm(x, packed, bias[:-1], out)


def test_packed_gemm_says_which_builds_tile(kernels):
    """Register tiles exactly where they were measured faster than oneDNN: fp32 on AVX-512, bf16
    with AVX512-BF16 (the engine keeps oneDNN elsewhere)."""
    name = kernels.__name__
    level = next(level for level in ISA_LEVELS if name.startswith(f"loraserve_cpu_kernels_{level}_"))
    assert (kernels.packed_gemm_tiled(False), kernels.packed_gemm_tiled(True)) == TILED[level]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("rows", "n", "k"), [(1, 960, 576), (3, 37, 61), (7, 64, 200), (13, 48, 130), (32, 80, 96)]
)
def test_w8a8_kernels_give_the_pytorch_paths_bits(kernels, dtype, rows, n, k):
    """The native GEMM on VNNI-packed weights (tiles of up to 6 rows x 64 channels, with
    remainders in both and N, K not multiples of 16, 4), native quantize + oneDNN's int8 GEMM +
    native rescale, and the PyTorch path (torch._int_mm) give the same bits, and all are the
    product of the dequantized weights with per-row rounded activations."""
    from loraserve.model.w8a8 import W8A8Format, W8A8Kernels, fake_quantize, pack_vnni, w8a8_available

    if not w8a8_available(torch.device("cpu")):
        pytest.skip("no int8 GEMM that sums in int32 on this CPU (VNNI / AMX-INT8)")
    native = W8A8Format(W8A8Kernels(kernels.w8a8_gemm, kernels.w8a8_quantize, kernels.w8a8_rescale))
    plain = W8A8Format()
    plain.onednn = False
    x = _rand(rows, k, dtype=dtype, seed=1) * torch.linspace(0.1, 4, k).to(dtype)  # uneven columns
    x[0] = 0  # a zero row quantizes to zeros
    weight = _rand(n, k, seed=2)
    stored, dequantized = native.quantize(weight, dtype)
    assert stored.vnni is not None and stored.q is None
    plain_stored = plain.quantize(weight, dtype)[0]
    assert plain_stored.q is not None and torch.equal(pack_vnni(plain_stored.q), stored.vnni)
    ours = native.matmul(x, stored)
    theirs = plain.matmul(x, plain_stored)
    assert torch.equal(ours, theirs)
    onednn = W8A8Format(native.native)
    onednn.onednn, onednn.native_rows = True, 0  # every row count through oneDNN's GEMM
    if W8A8Format().onednn:  # native quantize, oneDNN's GEMM, native rescale
        assert torch.equal(onednn.matmul(x, onednn.quantize(weight, dtype)[0]), theirs)
    expected = fake_quantize(x.float()) @ dequantized.T
    if dtype == torch.float32:
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    else:
        assert _close(ours, expected.to(dtype))
    out = torch.empty(rows, n, dtype=dtype)
    with pytest.raises(RuntimeError, match="wsum and sw must be"):
        kernels.w8a8_gemm(x, stored.vnni, stored.wsum[:-1], stored.scales, out)
    with pytest.raises(RuntimeError, match="w must be"):
        kernels.w8a8_gemm(x[:, : k - 4].contiguous(), stored.vnni, stored.wsum, stored.scales, out)
    poisoned = x.clone()
    poisoned[-1, k // 2] = float("nan")  # a NaN input gives NaN outputs on every path, not zeros
    for fmt, weights in ((native, stored), (plain, plain_stored)):
        result = fmt.matmul(poisoned, weights)
        assert bool(result[-1].isnan().all()) and torch.equal(result[:-1], ours[:-1])
    with pytest.raises(RuntimeError, match="xu must be"):
        kernels.w8a8_quantize(x, torch.empty(rows, k + 1, dtype=torch.uint8), torch.empty(rows))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lora_slot_image_kernel_builds_the_pytorch_image(kernels, tmp_path, dtype, monkeypatch):
    """An adapter's slot image from the native kernel (one pass) equals the PyTorch path's, bit
    for bit: every-module adapters at one rank (the image is not zeroed first: every row is
    written), and per-module ranks and layers left out (rows below the slot's rank stay zero)."""
    from loraserve.engine import EngineConfig, LLMEngine
    from loraserve.model.lora.native import NativeLora
    from loraserve.model.peft_adapter import load_peft_adapter
    from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

    base = make_tiny_llama(tmp_path / "base")
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype=dtype, max_model_len=64, max_lora_rank=8))
    lora = engine.runner.lora
    if not isinstance(lora, NativeLora):
        pytest.skip("the native LoRA backend is not in use")
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapters = [
        make_peft_adapter(base, tmp_path / "all", rank=8, target_modules=every, alpha=24),
        make_peft_adapter(
            base,
            tmp_path / "mixed",
            rank=4,
            target_modules=every,
            rank_pattern={"v_proj": 2, "down_proj": 8},
            layers_to_transform=[1],
            seed=3,
        ),
    ]
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):  # a row left unwritten shows as NaN: never equal
        return empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    for path in adapters:
        images = []
        for kernel in (kernels.lora_image, None):
            weights = load_peft_adapter(path, engine.runner.args, 8, engine.dtype)
            lora.image_kernel = kernel
            lora.prepare(weights)
            assert weights.slot_image is not None
            images.append(weights.slot_image)
        native, reference = images
        assert native.keys() == reference.keys()
        for group in native:
            assert all(torch.equal(n, r) for n, r in zip(native[group], reference[group])), group
            if path.name == "mixed":  # layer 0 is not adapted: its rows must be zeros
                assert not native[group][0][0].any() and not native[group][1][0].any()
