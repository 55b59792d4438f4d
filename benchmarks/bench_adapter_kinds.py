"""What each adapter kind costs against plain LoRA, at batch 32 on SmolLM2-135M: DoRA (a row
scale after each DoRA module), ``modules_to_save`` (a full LM head per adapter, on the rows of
its requests) and per-request mixtures (two rank-8 adapters mixed per request, served as a
rank-16 mixture entry), in tok/s and as a ratio to plain rank-16 LoRA, same run.

    python benchmarks/bench_adapter_kinds.py [--batch 32] [--new-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from bench_engine import timed_run

from loraserve.engine import EngineConfig, LLMEngine
from loraserve.model.default_model import smollm2_path
from loraserve.model.hardware import cpu_info
from loraserve.testing.tiny import write_random_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    opts = parser.parse_args()
    engine = LLMEngine(
        EngineConfig(
            model_id=str(smollm2_path()),
            dtype=opts.dtype,
            max_loras=32,
            max_lora_rank=16,
            max_rolling_batch_size=opts.batch,
        )
    )
    args = engine.runner.args
    shapes = {m: args.module_shape(m) for m in args.lora_modules}
    modules = list(args.lora_modules)
    kinds: dict[str, list] = {"base": [None] * opts.batch}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(8):
            head = (args.vocab_size, args.hidden_size)
            for kind, rank, dora, lm_head in (
                ("lora", 16, False, None),
                ("dora", 16, True, None),
                ("half", 8, False, None),
                ("head", 16, False, head),
            ):
                path = write_random_adapter(
                    root / f"{kind}{i}",
                    shapes,
                    args.num_layers,
                    rank,
                    modules,
                    seed=100 * rank + i + dora,
                    dora=dora,
                    head=lm_head,
                )
                engine.register_adapter(f"{kind}{i}", path)
        kinds["lora r16"] = [f"lora{i % 8}" for i in range(opts.batch)]
        kinds["dora r16"] = [f"dora{i % 8}" for i in range(opts.batch)]
        kinds["r16 + lm_head"] = [f"head{i % 8}" for i in range(opts.batch)]
        kinds["mix 2 x r8"] = [
            ((f"half{i % 8}", 0.7), (f"half{(i + 1) % 8}", 0.3)) for i in range(opts.batch)
        ]
        rng = random.Random(0)
        prompts = [[rng.randrange(100, 40000) for _ in range(opts.prompt_len)] for _ in range(opts.batch)]
        timed_run(engine, prompts[:2], [None, None], 2)  # warm-up
        results = {}
        for kind, adapters in kinds.items():
            runs = [timed_run(engine, prompts, adapters, opts.new_tokens) for _ in range(opts.repeats)]
            results[kind] = max(r["tok_s"] for r in runs)
    print(
        f"SmolLM2-135M, {engine.runner.info()['dtype']}, kernels {engine.runner.ops.name}, CPU ISA "
        f"{cpu_info().isa}; batch {opts.batch}, {opts.prompt_len}-token prompts, "
        f"{opts.new_tokens} new tokens, best of {opts.repeats}; 8 distinct adapters of each kind"
    )
    for kind, tok_s in results.items():
        print(f"  {kind:13s} {tok_s:7.1f} tok/s   ratio to plain LoRA {tok_s / results['lora r16']:.2f}")


if __name__ == "__main__":
    main()
