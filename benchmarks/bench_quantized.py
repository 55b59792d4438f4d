"""Quantized base weights (``option.quantize=int8``, ``q4``, ``q8``, ``w8a8``) against the default
dtype, in one run.

SmolLM2-135M (the demo model; q4 serves its shipped Q4_1 GGUF file's own blocks); decode
throughput at batch 1 and at batch ``--batch``, the base
and one r16 all-linear adapter per request, best of ``--repeats`` alternating runs; bytes of
base weights read per decode step and the machine's copy bandwidth, for the roofline; and how
many greedy tokens each quantized model shares with the default-dtype one (quantizing changes the
weights, so some drift is the quantization's own; exactness against the dequantized model is
``tests/integration/test_quantized_base.py``).

    python -m benchmarks.bench_quantized [--formats int8,q4] [--batch 32] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_engine import copy_bandwidth, decode_weight_bytes, make_adapters, timed_run
from loraserve.engine import EngineConfig, LLMEngine
from loraserve.model.args import LORA_MODULES
from loraserve.model.default_model import smollm2_gguf
from loraserve.model.hardware import cpu_info


def engine_for(model: str, quantize: str, batch: int, adapters: list[Path]) -> LLMEngine:
    """SmolLM2 under q4/q8 is its shipped Q4_1 GGUF file (served in its own blocks); a shaped
    model is quantized whole."""
    from benchmarks.bench_vs_vllm import model_path

    path = smollm2_gguf() if model == "smollm2" and quantize in ("q4", "q8") else model_path(model)
    config = EngineConfig(
        model_id=str(path),
        dtype="auto",
        max_rolling_batch_size=batch,
        max_model_len=160,
        max_lora_rank=16,
        quantize=quantize,
    )
    engine = LLMEngine(config)
    for i, path in enumerate(adapters):
        engine.register_adapter(f"a{i}", path)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="int8,q4", help="option.quantize values to compare")
    parser.add_argument(
        "--model", default="smollm2", help="smollm2 or a shape of benchmarks/shaped_models.py"
    )
    parser.add_argument("--batch", type=int, default=32, help="the larger batch (0: batch 1 only)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        from benchmarks.bench_vs_vllm import model_path

        probe = LLMEngine(EngineConfig(model_id=str(model_path(args.model)), dtype="auto", max_lora_rank=16))
        shapes_args = probe.runner.args
        adapters = make_adapters(Path(tmp), shapes_args, max(1, args.batch), 16, list(LORA_MODULES), "a")
        del probe
        formats = [f for f in args.formats.split(",") if f]
        engines = {q: engine_for(args.model, q, max(1, args.batch), adapters) for q in ["", *formats]}
        vocab = shapes_args.vocab_size
        prompts = [
            torch.randint(100, vocab - 100, (args.prompt_len,)).tolist() for _ in range(max(1, args.batch))
        ]
        bandwidth = copy_bandwidth()
        dtype = str(engines[""].dtype).replace("torch.", "")
        print(
            f"CPU ISA level {cpu_info().isa}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
            f"{args.model}, default dtype {dtype}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
            f"best of {args.repeats} alternating runs"
        )
        cases = {
            "batch 1, base": (prompts[:1], [None]),
            "batch 1, adapter": (prompts[:1], ["a0"]),
        }
        if args.batch > 1:
            cases[f"batch {args.batch}, base"] = (prompts, [None] * args.batch)
            cases[f"batch {args.batch}, {args.batch} adapters"] = (
                prompts,
                [f"a{i}" for i in range(args.batch)],
            )
        ids: dict[str, list] = {}
        for label, (batch_prompts, names) in cases.items():
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for quantize, engine in engines.items():
                    run = timed_run(engine, batch_prompts, names, args.new_tokens)
                    if quantize not in best or run["tok_s"] > best[quantize]["tok_s"]:
                        best[quantize] = run
            plain = best[""]
            ids[label] = {q: best[q]["token_ids"] for q in engines}
            read = {q: decode_weight_bytes(engines[q]) for q in engines}
            roof = {q: read[q] / (best[q]["step_ms"] / 1e3) / bandwidth for q in engines}
            figures = ", ".join(
                f"{q} {best[q]['tok_s']:.1f} tok/s ({best[q]['step_ms']:.1f} ms/step, {100 * roof[q]:.0f}%): "
                f"{best[q]['tok_s'] / plain['tok_s']:.2f}x"
                for q in formats
            )
            print(
                f"{label}: {dtype} {plain['tok_s']:.1f} tok/s ({plain['step_ms']:.1f} ms/step, "
                f"{100 * roof['']:.0f}% of bandwidth), {figures}"
            )
        for q in formats:
            same = total = 0
            for runs in ids.values():
                for a, b in zip(runs[""], runs[q]):
                    total += len(a)
                    same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            print(f"{q}: greedy tokens before the first difference from {dtype}: {100 * same / total:.0f}%")


if __name__ == "__main__":
    main()
