"""Issue 12's workload against vLLM's CPU build, prefix caching on in both, in one run.

``--requests`` requests spread over ``--adapters`` rank-16 all-linear adapters share one
``--system-len``-token system prompt, each with its own ``--user-len``-token question, and ask for
``--new-tokens`` greedy tokens, all submitted at once. Each repeat uses a fresh system prompt, so
neither engine reuses blocks from an earlier repeat: the prefix is computed once per adapter
inside the burst, or not at all. Prints the mean time to first token and throughput of both, with
the ratios against the goal (>= 1.5x), and then how many sequences of this workload fit at once in
a fixed KV budget: paged blocks (measured, a running engine's peak batch) against one
``max_model_len`` slot per sequence (the design before paging: budget / slot size).

    benchmarks/setup_vllm_cpu.sh && python -m benchmarks.bench_prefix_vs_vllm
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from benchmarks.bench_engine import make_adapters
from benchmarks.bench_vs_vllm import HERE, VllmWorker, vllm_model_dir
from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.args import LORA_MODULES
from loraserve.model.default_model import smollm2_path

GOAL = 1.5


def workload(seed: int, opts: argparse.Namespace, vocab: int) -> list[list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(100, vocab - 100) for _ in range(opts.system_len)]
    return [
        system + [rng.randrange(100, vocab - 100) for _ in range(opts.user_len)] for _ in range(opts.requests)
    ]


def run_loraserve(
    engine: LLMEngine, prompts: list[list[int]], adapters: list[str | None], new_tokens: int
) -> dict:
    """All submitted at once, stepped to completion: tok/s and the mean time to first token."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    first: dict[int, float] = {}
    began = time.perf_counter()
    computed = engine.computed_tokens
    seqs = [
        engine.add_request(
            p, a, params, on_event=lambda e: first.setdefault(e.request_id, time.perf_counter())
        )
        for p, a in zip(prompts, adapters)
    ]
    while engine.has_work():
        engine.step()
    elapsed = time.perf_counter() - began
    tokens = sum(len(s.output_ids) for s in seqs)
    return {
        "tok_s": tokens / elapsed,
        "seconds": elapsed,
        "token_ids": [s.output_ids for s in seqs],
        "ttft_mean": sum(first[s.request_id] - began for s in seqs) / len(seqs),
        "prefill_tokens": engine.computed_tokens - computed - sum(len(s.output_ids) - 1 for s in seqs),
    }


def peak_concurrency(
    path: Path, opts: argparse.Namespace, budget: str, adapter_paths: list[Path], vocab: int
) -> tuple[int, int, int]:
    """(peak running sequences, slots the old design had, total requests) for ``budget``."""
    requests = 4 * opts.requests
    engine = LLMEngine(
        EngineConfig(
            model_id=str(path),
            dtype=opts.dtype,
            max_rolling_batch_size=requests,
            max_num_batched_tokens=max(2048, requests),
            kv_cache_memory=budget,
            max_model_len=opts.max_model_len,
            max_loras=opts.adapters,
            max_lora_rank=16,
        )
    )
    for i, adapter in enumerate(adapter_paths):
        engine.register_adapter(f"p{i}", adapter)
    slot_bytes = engine.runner.max_len * engine.runner.kv_bytes_per_token()
    slots = engine.kv.bytes // slot_bytes
    prompts = workload(999, opts, vocab) * 4
    params = SamplingParams(max_new_tokens=opts.new_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(prompt, f"p{i % opts.adapters}", params)
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, engine.stats()["running"])
    return peak, slots, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--system-len", type=int, default=512)
    parser.add_argument("--user-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs, best kept")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=2048, help="for the fixed-budget comparison")
    parser.add_argument("--budget", default="256MiB", help="KV budget of the fixed-budget comparison")
    parser.add_argument("--vllm-python", type=Path, default=HERE / ".vllm-venv" / "bin" / "python")
    parser.add_argument("--vllm-eager", action="store_true")
    opts = parser.parse_args()
    path, n = smollm2_path(), opts.requests
    max_len = opts.system_len + opts.user_len + opts.new_tokens + 16
    engine = LLMEngine(
        EngineConfig(
            model_id=str(path),
            dtype=opts.dtype,
            max_rolling_batch_size=n,
            max_model_len=max_len,
            max_loras=opts.adapters,
            max_lora_rank=16,
        )
    )
    info, args = engine.info(), engine.runner.args
    print(
        f"machine: {os.cpu_count()} cores, isa {info['isa']}, loraserve dtype {info['dtype']} "
        f"({info['kernels']}), vLLM-CPU dtype {info['dtype']}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{n} requests over {opts.adapters} r16 all-linear adapters, shared {opts.system_len}-token "
        f"system prompt + {opts.user_len} own tokens, {opts.new_tokens} new tokens; prefix caching "
        f"on in both; best of {opts.repeats} alternating runs",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="loraserve-prefix-"))
    paths = make_adapters(tmp, args, opts.adapters, 16, list(LORA_MODULES), "pfx_")
    for i, adapter in enumerate(paths):
        engine.register_adapter(f"pfx_{i}", adapter)
    mine = [f"pfx_{i % opts.adapters}" for i in range(n)]
    theirs = [str(paths[i % opts.adapters]) for i in range(n)]
    worker = None
    if opts.vllm_python.is_file():
        worker = VllmWorker(
            opts.vllm_python,
            {
                "model": str(vllm_model_dir(path, tmp)),
                "dtype": info["dtype"],
                "max_num_seqs": n,
                "max_model_len": max_len,
                "enforce_eager": opts.vllm_eager,
                "enable_prefix_caching": True,
                "enable_lora": True,
                "max_loras": opts.adapters,
                "max_lora_rank": 16,
            },
        )
    else:
        print(f"no vLLM at {opts.vllm_python} (run benchmarks/setup_vllm_cpu.sh): loraserve only")
    try:
        run_loraserve(engine, workload(0, opts, args.vocab_size), mine, 2)  # warm-up: adapters resident
        if worker:
            worker.run(workload(0, opts, args.vocab_size), theirs, 2)
        best_ours, best_theirs = None, None
        for repeat in range(opts.repeats):
            prompts = workload(repeat + 1, opts, args.vocab_size)  # a fresh system prompt
            ours = run_loraserve(engine, prompts, mine, opts.new_tokens)
            best_ours = ours if best_ours is None or ours["tok_s"] > best_ours["tok_s"] else best_ours
            if worker:
                time.sleep(0.5)
                run = worker.run(prompts, theirs, opts.new_tokens, ids=True)
                if best_theirs is None or run["tok_s"] > best_theirs["tok_s"]:
                    best_theirs = run
                time.sleep(0.5)
    finally:
        if worker:
            worker.close()
    report(best_ours, best_theirs, opts)
    peak, slots, total = peak_concurrency(path, opts, opts.budget, paths, args.vocab_size)
    print(
        f"fixed KV budget {opts.budget}, max_model_len {opts.max_model_len}: {peak} of {total} requests "
        f"ran at once (paged) vs {slots} max_model_len slots -> {peak / max(slots, 1):.1f}x"
    )
    print(f"load at the end {os.getloadavg()[0]:.1f}")


def report(ours: dict, theirs: dict | None, opts: argparse.Namespace) -> None:
    unshared = opts.requests * (opts.system_len + opts.user_len)
    print(
        f"loraserve: {ours['tok_s']:.1f} tok/s, mean TTFT {1000 * ours['ttft_mean']:.0f} ms; prefill "
        f"computed {ours['prefill_tokens']} of {unshared} prompt tokens"
    )
    if theirs is None:
        return
    ttft = theirs.get("ttft_mean")
    print(
        f"vLLM-CPU:  {theirs['tok_s']:.1f} tok/s, mean TTFT "
        f"{'n/a' if ttft is None else f'{1000 * ttft:.0f} ms'}"
    )
    ratio = ours["tok_s"] / theirs["tok_s"]
    print(f"throughput ratio {ratio:.2f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'MISSED'})")
    if ttft:
        speedup = ttft / ours["ttft_mean"]
        print(
            f"TTFT ratio (vLLM / loraserve) {speedup:.2f} (goal >= {GOAL}: "
            f"{'met' if speedup >= GOAL else 'MISSED'})"
        )
    same = sum(a == b for a, b in zip(ours["token_ids"], theirs["token_ids"] or []))
    print(f"greedy outputs: {same}/{len(ours['token_ids'])} sequences token-identical")


if __name__ == "__main__":
    main()
