"""The base model's matrix products alone, at decode and prefill row counts: loraserve's packed
GEMM (``csrc/gemm.cpp``) against oneDNN's packed linear (what vLLM-CPU and loraserve used before)
and the native GEMV, over one forward pass's matrices of a real model's shapes, weights cold (the
whole set is streamed once per pass, as in a decode step). Prints ms per pass, GFLOP/s, the
fraction of the machine's matmul peak, the ratios, and the ISA.

    python -m benchmarks.bench_gemm                       # SmolLM2-135M, bf16 where native
    python -m benchmarks.bench_gemm --model llama-3.2-1b --rows 1,32
    python -m benchmarks.bench_gemm --dtype float32 --level avx2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks.bench_vs_vllm import matmul_peak
from benchmarks.shaped_models import SHAPES
from loraserve.model.hardware import auto_dtype, cpu_info
from loraserve.model.native import cpu_kernels
from loraserve.model.packed import GEMV_MAX_ROWS, pack_for_gemm

linear_pointwise = torch.ops.mkldnn._linear_pointwise

SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
}


def matrix_shapes(shape: dict) -> list[tuple[int, int]]:
    """(N, K) of every base matrix of one forward pass: fused QKV, O, fused gate-up, down per layer,
    then the LM head."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = shape.get("head_dim", hidden // shape["num_attention_heads"])
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    layer = [(q + 2 * kv, hidden), (hidden, q), (2 * inter, hidden), (hidden, inter)]
    return layer * shape["num_hidden_layers"] + [(shape["vocab_size"], hidden)]


def seconds(calls: list[Callable[[], object]]) -> float:
    """One forward pass's products, timed."""
    began = time.perf_counter()
    for call in calls:
        call()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", *SHAPES])
    parser.add_argument("--rows", default="1,4,8,16,32,64,256")
    parser.add_argument("--dtype", default=None, help="bfloat16 or float32 (default: the engine's choice)")
    parser.add_argument("--level", default=None, help="the kernels' ISA build (default: this CPU's widest)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else auto_dtype(torch.device("cpu"))
    kernels = cpu_kernels(args.level)
    if kernels is None:
        raise SystemExit("the native kernels did not build here")
    level = args.level or cpu_info().isa
    shapes = matrix_shapes(SMOLLM2 if args.model == "smollm2-135m" else SHAPES[args.model])
    weights = [torch.randn(n, k).to(dtype) * 0.05 for n, k in shapes]
    packed = [pack_for_gemm(w) for w in weights]
    peak = matmul_peak(dtype)
    flops_per_row = sum(2 * n * k for n, k in shapes)
    tiled = kernels.packed_gemm_tiled(dtype == torch.bfloat16)
    print(
        f"{args.model} matrices ({len(shapes)}, {sum(w.nbytes for w in weights) / 1e6:.0f} MB), {dtype}, "
        f"CPU ISA {cpu_info().isa}, kernels {level} ({'register tiles' if tiled else 'plain loop'}), "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s, load {Path('/proc/loadavg').read_text().split()[0]}"
    )
    for rows in [int(r) for r in args.rows.split(",")]:
        xs = {k: torch.randn(rows, k).to(dtype) for _, k in shapes}
        outs = [torch.empty(rows, n, dtype=dtype) for n, _ in shapes]
        onednn = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
        calls = {
            "packed": [
                partial(kernels.packed_gemm, xs[k], p, None, o) for p, (_, k), o in zip(packed, shapes, outs)
            ],
            "onednn": [
                partial(linear_pointwise, xs[k], o, None, "none", [], "") for o, (_, k) in zip(onednn, shapes)
            ],
        }
        if rows <= GEMV_MAX_ROWS:
            calls["gemv"] = [
                partial(kernels.gemv, xs[k], w, None, o) for w, (_, k), o in zip(weights, shapes, outs)
            ]
        times = {name: float("inf") for name in calls}
        for _ in range(args.repeats):  # interleaved, best of
            for name, pass_calls in calls.items():
                times[name] = min(times[name], seconds(pass_calls))
        rates = {name: flops_per_row * rows / t for name, t in times.items()}
        figures = "  ".join(
            f"{name} {t * 1e3:7.2f} ms {rates[name] / 1e9:4.0f} GF/s ({rates[name] / peak:4.0%})"
            for name, t in times.items()
        )
        ratios = "  ".join(
            f"vs {name} {t / times['packed']:.2f}x" for name, t in times.items() if name != "packed"
        )
        print(f"rows {rows:5d}: {figures}  |  {ratios}", flush=True)


if __name__ == "__main__":
    main()
