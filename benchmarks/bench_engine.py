"""Engine throughput on SmolLM2-135M (``--dtype``, default auto) against transformers and PEFT, in one run.

Prints tokens/s for: (a) engine, base model; (b) engine, 32 requests on 32 different rank-16
all-linear adapters; (c) the same with rank-8 q_proj,v_proj adapters; (d) transformers
``generate`` on the base model; (e) PEFT ``generate`` with ``adapter_names`` for (b)'s mix;
the ratios against the targets; decode step time against the memory-bandwidth bound; adapter
load latency; and a 1,000-adapter run with ``max_loras=32``.

    python benchmarks/bench_engine.py [--batch 32] [--prompt-len 32] [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.args import FUSED, LORA_MODULES, ModelArgs
from loraserve.model.default_model import smollm2_path
from loraserve.testing.tiny import write_random_adapter


def timed_run(engine: LLMEngine, prompts: list[list[int]], adapters: list, new_tokens: int) -> dict:
    """Submit all, step to completion: tok/s, the mean decode-only step time and the output ids."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    seqs = [engine.add_request(p, a, params) for p, a in zip(prompts, adapters)]
    step_times = []
    start = time.perf_counter()
    while engine.has_work():
        began = time.perf_counter()
        engine.step()
        step_times.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    tokens = sum(len(s.output_ids) for s in seqs)
    decode = step_times[1:] or step_times
    return {
        "tok_s": tokens / elapsed,
        "step_ms": 1000 * sum(decode) / len(decode),
        "seconds": elapsed,
        "token_ids": [s.output_ids for s in seqs],
    }


def decode_weight_bytes(engine: LLMEngine) -> int:
    """Bytes of base matrices one single-stream decode step reads (the roofline's numerator):
    quantized matrices in their stored form, the others in their dtype."""
    from loraserve.model.quantized import QuantizedLinears

    linears = engine.runner.linears
    if isinstance(linears, QuantizedLinears):
        return linears.weight_bytes()
    w = engine.runner.weights
    return sum(layer.fused(n).nbytes for layer in w.layers for n in FUSED) + w.lm_head.nbytes


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write), the machine's practical memory bound."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1)  # 256 MiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - began)
    return 2 * src.numel() * 4 / best


def hf_generate(model, prompts: list[list[int]], new_tokens: int, **kwargs) -> float:
    ids = torch.tensor(prompts)
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
    elapsed = time.perf_counter() - began
    return (out.shape[1] - ids.shape[1]) * ids.shape[0] / elapsed


def make_adapters(
    root: Path, args: ModelArgs, count: int, rank: int, modules: list[str], prefix: str
) -> list[Path]:
    shapes = {m: args.module_shape(m) for m in LORA_MODULES}
    return [
        write_random_adapter(root / f"{prefix}{i}", shapes, args.num_layers, rank, modules, seed=i)
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--scale-adapters", type=int, default=1000)
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 with native bf16 hardware, else fp32")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs per case, best kept (this machine's timings are noisy)",
    )
    opts = parser.parse_args()
    torch.manual_seed(0)
    path = smollm2_path()
    n, new = opts.batch, opts.new_tokens
    engine = LLMEngine(
        EngineConfig(
            model_id=str(path),
            dtype=opts.dtype,
            max_rolling_batch_size=n,
            max_model_len=opts.prompt_len + new + 8,
            max_loras=32,
            max_lora_rank=16,
            max_cpu_loras=64,
        )
    )
    args = engine.runner.args
    prompts = torch.randint(100, args.vocab_size - 100, (n, opts.prompt_len)).tolist()
    tmp = Path(tempfile.mkdtemp(prefix="loraserve-bench-"))
    all16 = make_adapters(tmp, args, n, 16, list(LORA_MODULES), "all16_")
    qv8 = make_adapters(tmp, args, n, 8, ["q_proj", "v_proj"], "qv8_")
    for i, p in enumerate(all16):
        engine.register_adapter(f"all16_{i}", p)
    for i, p in enumerate(qv8):
        engine.register_adapter(f"qv8_{i}", p)
    mixes = {"a": [None] * n, "b": [f"all16_{i}" for i in range(n)], "c": [f"qv8_{i}" for i in range(n)]}
    runs = {}
    for key, mix in mixes.items():
        # Warm-up on the same mix: its adapters go to the compute slots first, as PEFT's are
        # all loaded before its timing starts. Best of --repeats, as for the peers.
        timed_run(engine, prompts, mix, 2)
        runs[key] = max(
            (timed_run(engine, prompts, mix, new) for _ in range(opts.repeats)), key=lambda r: r["tok_s"]
        )
    print(
        f"batch {n}, prompt {opts.prompt_len} tokens, {new} new tokens, {engine.info()}, "
        f"{torch.get_num_threads()} threads, best of {opts.repeats} runs each"
    )
    for key, label in (
        ("a", "engine, base model"),
        ("b", f"engine, {n} adapters r16 all-linear"),
        ("c", f"engine, {n} adapters r8 q,v"),
    ):
        r = runs[key]
        print(f"({key}) {label:38s} {r['tok_s']:8.1f} tok/s   decode step {r['step_ms']:6.1f} ms")
    runs["dtype"] = engine.dtype  # the peers run in the engine's dtype
    report_peers(path, prompts, new, all16, runs, opts)
    report_bandwidth(engine, runs)
    report_load_latency(engine, tmp, args, prompts[0])
    report_scale(engine, tmp, args, prompts, opts.scale_adapters)


def report_peers(
    path: Path, prompts, new: int, all16: list[Path], runs: dict, opts: argparse.Namespace
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=runs["dtype"])
    hf_generate(model, prompts[:2], 2)
    d = max(hf_generate(model, prompts, new) for _ in range(opts.repeats))
    print(f"(d) transformers generate, base        {d:8.1f} tok/s")
    print(f"    ratio (a)/(d) = {runs['a']['tok_s'] / d:5.2f}  (target >= 2)")
    print(f"    ratio (c)/(a) = {runs['c']['tok_s'] / runs['a']['tok_s']:5.2f}  (target >= 0.9)")
    if opts.skip_peft:
        return
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, all16[0], adapter_name="all16_0")
    for i, p in enumerate(all16[1:], start=1):
        peft_model.load_adapter(p, adapter_name=f"all16_{i}")
    names = [f"all16_{i}" for i in range(len(prompts))]
    e = max(hf_generate(peft_model, prompts, new, adapter_names=names) for _ in range(opts.repeats))
    print(f"(e) PEFT generate, adapter_names mix    {e:8.1f} tok/s")
    print(f"    ratio (b)/(e) = {runs['b']['tok_s'] / e:5.2f}  (target >= 10)")


def report_bandwidth(engine: LLMEngine, runs: dict) -> None:
    bandwidth = copy_bandwidth()
    weights = engine.runner.weights.nbytes()
    lora = engine.runner.lora.nbytes()
    print(
        f"memory copy bandwidth {bandwidth / 1e9:.1f} GB/s; weights {weights / 2**20:.0f} MiB; "
        f"resident LoRA stacks {lora / 2**20:.0f} MiB"
    )
    for key, extra in (("a", 0), ("b", lora)):
        bound = 1000 * (weights + extra) / bandwidth
        print(
            f"    ({key}) decode step {runs[key]['step_ms']:6.1f} ms vs bandwidth bound {bound:5.1f} ms "
            f"({runs[key]['step_ms'] / bound:4.1f}x)"
        )


def report_load_latency(engine: LLMEngine, tmp: Path, args: ModelArgs, prompt: list[int]) -> None:
    """Best of three each (single samples are at the mercy of this machine's noise): a base
    first token, and registering a fresh adapter then serving its first token."""
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    fresh = make_adapters(tmp, args, 3, 16, list(LORA_MODULES), "fresh_")
    base_ttft, registered, total = [], [], []
    for i, path in enumerate(fresh):
        began = time.perf_counter()
        engine.generate([prompt], [None], one)
        base_ttft.append(time.perf_counter() - began)
        began = time.perf_counter()
        engine.register_adapter(f"fresh_{i}", path)
        registered.append(time.perf_counter() - began)
        engine.generate([prompt], [f"fresh_{i}"], one)
        total.append(time.perf_counter() - began)
    base, reg, both = min(base_ttft), min(registered), min(total)
    print(
        f"adapter load (best of 3): register r16 all-linear {1000 * reg:.1f} ms; register + first "
        f"token {1000 * both:.1f} ms vs base first token {1000 * base:.1f} ms -> added "
        f"{1000 * (both - base):.1f} ms (target < 100 ms)"
    )


def report_scale(engine: LLMEngine, tmp: Path, args: ModelArgs, prompts, count: int) -> None:
    if count <= 0:
        return
    for name in list(engine.adapters.registered):
        engine.unregister_adapter(name)
    paths = make_adapters(tmp, args, count, 8, ["q_proj", "v_proj"], "scale_")
    for i, p in enumerate(paths):
        engine.register_adapter(f"scale_{i}", p, preload=False)
    names = [f"scale_{i}" for i in range(count)]
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    began = time.perf_counter()
    results = engine.generate([prompts[i % len(prompts)] for i in range(count)], names, params)
    elapsed = time.perf_counter() - began
    tokens = sum(len(r.token_ids) for r in results)
    stats = engine.adapters.stats()
    mem = engine.memory_stats()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"scale: {count} adapters, max_loras=32, max_cpu_loras=64: {tokens / elapsed:.1f} tok/s; "
        f"loads {stats['loads']}, evictions {stats['evictions']}, in memory {stats['in_memory']}, "
        f"resident {stats['resident']}; adapter memory {mem['adapter_cpu_bytes'] / 2**20:.1f} MiB; "
        f"peak RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
