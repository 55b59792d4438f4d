"""Engine throughput per model family, so a family much slower than Llama shows up.

Each family is a random model built with transformers' own config class at a tiny-but-not-toy
size (hidden 1024, 8 layers, 16 heads / 4 KV heads of 64, intermediate 2816), with the family's
features on (sliding windows, soft-caps, QK-norm, fused projections, scaled RoPE). The engine runs
``--batch`` prompts of ``--prompt-len`` tokens for ``--new-tokens`` greedy tokens, base only and
mixed over 4 rank-16 all-linear adapters; prints tok/s and the ratio to Llama in the same run.

    python benchmarks/bench_families.py [--dtype auto] [--batch 16] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from bench_engine import timed_run

from loraserve.engine import EngineConfig, LLMEngine
from loraserve.model.hardware import cpu_info
from loraserve.testing.families import FAMILY_CONFIGS, make_tiny_family
from loraserve.testing.tiny import write_random_adapter

SIZE = dict(layers=8, hidden=1024, heads=16, kv_heads=4, intermediate=2816, max_positions=2048)


def run_family(root: Path, family: str, opts: argparse.Namespace) -> dict[str, float]:
    overrides: dict = {"head_dim": 64}
    if family.startswith("gemma"):
        overrides["query_pre_attn_scalar"] = 64
    base = make_tiny_family(root / family, family, **SIZE, **overrides)
    engine = LLMEngine(
        EngineConfig(
            model_id=str(base),
            dtype=opts.dtype,
            max_model_len=512,
            max_loras=4,
            max_lora_rank=16,
            max_rolling_batch_size=opts.batch,
        )
    )
    args = engine.runner.args
    shapes = {m: args.module_shape(m) for m in args.lora_modules}
    for i in range(4):
        path = write_random_adapter(
            root / f"{family}-a{i}", shapes, args.num_layers, 16, list(args.lora_modules), seed=i
        )
        engine.register_adapter(f"a{i}", path)
    rng = random.Random(0)
    prompts = [
        [rng.randrange(2, args.vocab_size - 2) for _ in range(opts.prompt_len)] for _ in range(opts.batch)
    ]
    timed_run(engine, prompts[:2], [None, None], 4)  # warm-up
    base_run = max(
        (timed_run(engine, prompts, [None] * opts.batch, opts.new_tokens) for _ in range(opts.repeats)),
        key=lambda r: r["tok_s"],
    )
    mixed = [f"a{i % 4}" for i in range(opts.batch)]
    mixed_run = max(
        (timed_run(engine, prompts, mixed, opts.new_tokens) for _ in range(opts.repeats)),
        key=lambda r: r["tok_s"],
    )
    return {
        "base": base_run["tok_s"],
        "mixed": mixed_run["tok_s"],
        "kernels": engine.runner.ops.name,
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILY_CONFIGS))
    opts = parser.parse_args()
    cpu = cpu_info()
    print(
        f"CPU ISA {cpu.isa}; {opts.batch} prompts x {opts.prompt_len} tokens, {opts.new_tokens} new tokens; "
        "hidden 1024, 8 layers, 16/4 heads of 64, intermediate 2816"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in opts.families.split(","):
            results[family] = run_family(Path(tmp), family, opts)
            r = results[family]
            print(
                f"  {family:8s} {r['dtype']:8s} {r['kernels']:20s} base {r['base']:7.1f} tok/s   "
                f"4 adapters mixed {r['mixed']:7.1f} tok/s",
                flush=True,
            )
    ref = results.get("llama3")
    if ref:
        print("ratio to llama3 (base / mixed):")
        for family, r in results.items():
            print(f"  {family:8s} {r['base'] / ref['base']:.2f} / {r['mixed'] / ref['mixed']:.2f}")


if __name__ == "__main__":
    main()
