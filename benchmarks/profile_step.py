"""Where a decode step's time goes: GEMMs, LoRA, attention, the other small per-layer ops, and the
Python step bookkeeping (batch building, sampling, detokenizing), for SmolLM2 (or ``--model``) at
batch ``--batch`` (32; 1 for a single stream) in the dtype ``auto`` picks; then F.linear against
oneDNN-packed weights and loraserve's packed GEMM for each GEMM shape. Serving runs a decode
step's layers as one native call (``native_layers.py``): its step time is printed first, against
the decoder's Python loop over the same kernels in alternating windows of steps, then the
breakdown, which times the kernels called one by one from the Python loop.

    python -m benchmarks.profile_step [--adapters] [--steps 20] [--quantize w8a8] [--model qwen3-0.6b]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.bench_engine import make_adapters
from benchmarks.bench_vs_vllm import model_path
from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.args import FUSED, LORA_MODULES
from loraserve.model.packed import PackedGemm, pack_for_gemm

TOTALS: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[name] += time.perf_counter() - began

    return wrapper


def instrument(engine: LLMEngine) -> None:
    runner = engine.runner
    linears_cls = type(runner.linears)
    linears_cls.__call__ = timed("gemm", linears_cls.__call__)
    linears_cls.head = timed("gemm (lm head)", linears_cls.head)
    runner.lora.add_delta = timed("lora", runner.lora.add_delta)
    runner.decoder._attend = timed("attention", runner.decoder._attend)  # type: ignore[method-assign]
    runner.forward = timed("forward", runner.forward)
    engine.step = timed("step", engine.step)


def compare_linear(engine: LLMEngine, tokens: int, repeats: int = 30) -> None:
    """F.linear vs oneDNN packed weights (``torch.ops.mkldnn``) vs loraserve's packed GEMM (where
    this build tiles the dtype) per fused weight, weights in cache, at M = tokens."""
    weights = engine.runner.weights
    layer = weights.layers[0]
    gemm = engine.runner.ops.packed_gemm
    for name, weight in [*((n, layer.fused(n)) for n in FUSED), ("lm_head", weights.lm_head)]:
        times = _linear_times(weight, tokens, repeats, gemm)
        flops = 2 * tokens * weight.numel()
        print(
            f"  {name:8s} {tuple(weight.shape)}: "
            + " | ".join(f"{kind} {flops / seconds / 1e9:6.1f} GFLOP/s" for kind, seconds in times.items())
        )


def _linear_times(
    weight: torch.Tensor, tokens: int, repeats: int, gemm: PackedGemm | None
) -> dict[str, float]:
    x = torch.randn(tokens, weight.shape[1], dtype=weight.dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, tokens)
    times = {
        "F.linear": _best(lambda: F.linear(x, weight), repeats),
        "oneDNN packed": _best(
            lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), repeats
        ),
    }
    if gemm is not None:
        ours, out = pack_for_gemm(weight), torch.empty(tokens, weight.shape[0], dtype=weight.dtype)
        times["loraserve packed"] = _best(lambda: gemm(x, ours, None, out), repeats)
    return times


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--adapters", action="store_true", help="32 distinct r16 all-linear adapters")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--quantize", default="", help="option.quantize (int8, q4, q8, w8a8)")
    parser.add_argument("--model", default="smollm2", help="smollm2, a shaped_models.py shape, or a path")
    opts = parser.parse_args()
    n = opts.batch
    engine = LLMEngine(
        EngineConfig(
            model_id=str(model_path(opts.model)),
            max_rolling_batch_size=n,
            max_model_len=256,
            max_loras=n,
            max_lora_rank=16,
            threads=opts.threads,
            quantize=opts.quantize,
        )
    )
    print(engine.info())
    names: list[str | None] = [None] * n
    if opts.adapters:
        paths = make_adapters(Path(tempfile.mkdtemp()), engine.runner.args, n, 16, list(LORA_MODULES), "a")
        names = [f"a{i}" for i in range(n)]
        for name, path in zip(names, paths):
            engine.register_adapter(name, path)
    prompts = torch.randint(100, 40000, (n, 32)).tolist()
    params = SamplingParams(max_new_tokens=4 * opts.steps + 8, ignore_eos=True)
    for prompt, name in zip(prompts, names):
        engine.add_request(prompt, name, params)
    engine.step()  # the prefill, not profiled
    engine.step()
    decoder = engine.runner.decoder
    stacked = decoder.native_layers
    if stacked is not None:  # what serving runs: the layers in one native call
        took = {"native": 0.0, "loop": 0.0}
        for window in range(2 * opts.steps // 4):  # alternating windows of 4 steps: the same load
            kind = ("native", "loop")[window % 2]
            decoder.native_layers = stacked if kind == "native" else None
            began = time.perf_counter()
            for _ in range(4):
                engine.step()
            took[kind] += time.perf_counter() - began
        native, loop = (1000 * took[k] / (4 * (opts.steps // 4)) for k in ("native", "loop"))
        print(
            f"decode step, layers as one native call: {native:.1f} ms; the Python loop over the same "
            f"kernels: {loop:.1f} ms ({loop / native:.3f}x)"
        )
        decoder.native_layers = None  # the breakdown times the Python loop's calls
    instrument(engine)
    for _ in range(opts.steps):
        engine.step()
    step, forward = TOTALS["step"] / opts.steps, TOTALS["forward"] / opts.steps
    gemm = (TOTALS["gemm"] + TOTALS["gemm (lm head)"]) / opts.steps
    lora, attention = TOTALS["lora"] / opts.steps, TOTALS["attention"] / opts.steps
    small = forward - gemm - lora - attention
    print(f"decode step at batch {n}, kernel by kernel, mean of {opts.steps}: {1000 * step:.1f} ms")
    head = TOTALS["gemm (lm head)"] / opts.steps
    rows = (
        ("GEMMs (incl. LM head)", gemm),
        ("  of which LM head", head),
        ("LoRA (BGMV)", lora),
        ("decode attention", attention),
        ("other per-layer ops (norm, RoPE+KV, SwiGLU, views)", small),
        ("Python step bookkeeping (batch, sampling, detokenize)", step - forward),
    )
    for label, value in rows:
        print(f"  {label:55s} {1000 * value:7.2f} ms  {value / step:5.1%}")
    print(f"GEMM shapes at M={n}:")
    compare_linear(engine, n)


if __name__ == "__main__":
    main()
