"""loraserve against llama.cpp (llama-cpp-python, built from source for this CPU) on one stream,
on the same GGUF files, in one run, interleaved.

SmolLM2-135M-Instruct as shipped (Q4_1), as BF16 and as Q8_0 (written by llama.cpp's own
``convert_hf_to_gguf.py``); the base and one rank-16 all-linear adapter, converted for llama.cpp
by its own ``convert_lora_to_gguf.py``. Time to first token and time per output token for one
stream of ``--prompt-len`` ids and ``--new-tokens`` greedy tokens, best of ``--repeats``
alternating runs. On the Q4_1 file loraserve runs both ``option.quantize=q4`` (the file's own
4-bit blocks) and its default dtype (the file dequantized). The roofline line: bytes of weights a
decode step reads over the time per token, against the measured copy bandwidth.

    benchmarks/setup_llama_cpp.sh && python -m benchmarks.bench_vs_llama_cpp
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_engine import copy_bandwidth, decode_weight_bytes, make_adapters
from benchmarks.peer_worker import PeerWorker
from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.model.args import LORA_MODULES
from loraserve.model.default_model import smollm2_gguf, smollm2_path
from loraserve.model.hardware import cpu_info
from loraserve.model.loader import cache_root

HERE = Path(__file__).resolve().parent


class LlamaCppWorker(PeerWorker):
    """One ``llama_cpp.Llama`` (a model file and, optionally, a LoRA file) in its own process."""

    name = "llama.cpp"

    def __init__(self, python: Path, config: dict) -> None:
        super().__init__(python, "llama_cpp_worker.py", config, {**os.environ, "PYTHONPATH": ""})

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        return self.ask({"prompt": prompt, "new_tokens": new_tokens})


def loraserve_stream(engine: LLMEngine, prompt: list[int], adapter: str | None, new_tokens: int) -> dict:
    """The same measures as the worker's: the first step (prefill and the first token), then the
    mean of the steps that each give one more token."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    began = time.perf_counter()
    seq = engine.add_request(prompt, adapter, params)
    first = 0.0
    while engine.has_work():
        engine.step()
        if not first and seq.output_ids:
            first = time.perf_counter()
    end = time.perf_counter()
    count = len(seq.output_ids)
    return {
        "ttft": first - began,
        "tpot": (end - first) / max(1, count - 1),
        "token_ids": list(seq.output_ids),
    }


def converted(script: str, python: Path, args: list[str], target: Path) -> Path:
    """A file written by one of llama.cpp's converters, once (kept in loraserve's cache)."""
    if not target.is_file():
        staging = target.with_suffix(".tmp")
        source = HERE / ".llamacpp-venv" / "src" / "llama.cpp" / script
        subprocess.run(
            [str(python), str(source), *args, "--outfile", str(staging)],
            check=True,
            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
            capture_output=True,
        )
        staging.replace(target)
    return target


def engine_for(model: Path, quantize: str, adapter: Path) -> LLMEngine:
    config = EngineConfig(
        model_id=str(model),
        dtype="auto",
        max_model_len=512,
        max_lora_rank=16,
        max_rolling_batch_size=4,
        quantize=quantize,
    )
    engine = LLMEngine(config)
    engine.register_adapter("a0", adapter)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", type=Path, default=HERE / ".llamacpp-venv" / "bin" / "python")
    parser.add_argument("--files", default="Q4_1,BF16,Q8_0", help="which of the GGUF files to run")
    opts = parser.parse_args()
    threads = os.cpu_count() or 1
    hf_dir, q4_1 = smollm2_path(), smollm2_gguf()
    store = cache_root() / "bench-llama-cpp"
    store.mkdir(parents=True, exist_ok=True)
    bf16 = converted(
        "convert_hf_to_gguf.py",
        opts.python,
        [str(hf_dir), "--outtype", "bf16"],
        store / "SmolLM2-135M-Instruct.BF16.gguf",
    )
    chosen = opts.files.split(",")
    if set(chosen) - {"Q4_1", "BF16", "Q8_0"}:
        parser.error(f"--files: {opts.files} names a file other than Q4_1, BF16, Q8_0")
    q8_0 = store / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if "Q8_0" in chosen:
        converted("convert_hf_to_gguf.py", opts.python, [str(hf_dir), "--outtype", "q8_0"], q8_0)
    with tempfile.TemporaryDirectory() as tmp:
        probe = LLMEngine(EngineConfig(model_id=str(hf_dir), dtype="auto"))
        adapter = make_adapters(Path(tmp), probe.runner.args, 1, 16, list(LORA_MODULES), "a")[0]
        vocab = probe.runner.args.vocab_size
        del probe
        lora = converted(
            "convert_lora_to_gguf.py",
            opts.python,
            [str(adapter), "--base", str(hf_dir)],
            Path(tmp) / "a0.gguf",
        )
        torch.manual_seed(0)
        prompts = [torch.randint(100, vocab - 100, (opts.prompt_len,)).tolist() for _ in range(opts.repeats)]
        bandwidth = copy_bandwidth()
        print(
            f"CPU ISA level {cpu_info().isa}, {threads} threads each, load {os.getloadavg()[0]:.1f}; "
            f"SmolLM2-135M-Instruct, {opts.prompt_len} prompt ids, {opts.new_tokens} greedy tokens, "
            f"best of {opts.repeats}; copy bandwidth {bandwidth / 1e9:.1f} GB/s",
            flush=True,
        )
        files = {
            "Q4_1": (q4_1, [("q4", q4_1), ("", hf_dir)]),
            "BF16": (bf16, [("", bf16)]),
            # llama.cpp multiplies Q8_0 by 8-bit activations: against it, the file's own blocks
            # (q8, weight-only) and int8 weights times int8 activations (w8a8)
            "Q8_0": (q8_0, [("q8", q8_0), ("w8a8", hf_dir)]),
        }
        for label, (gguf, ours) in [(k, v) for k, v in files.items() if k in chosen]:
            engines = {q or "default dtype": engine_for(model, q, adapter) for q, model in ours}
            for with_adapter in (False, True):
                config = {"model": str(gguf), "lora": str(lora) if with_adapter else None}
                worker = LlamaCppWorker(opts.python, {**config, "threads": threads, "n_ctx": 512})
                best = interleaved(worker, engines, prompts, "a0" if with_adapter else None, opts)
                worker.close()
                case = f"{label}, {'one r16 all-linear adapter' if with_adapter else 'base'}"
                report(case, best, engines, bandwidth)


def interleaved(
    worker: LlamaCppWorker,
    engines: dict[str, LLMEngine],
    prompts: list[list[int]],
    adapter: str | None,
    opts: argparse.Namespace,
) -> dict[str, dict]:
    """Each program's best TTFT and best TPOT over alternating runs, one fresh prompt per run
    (the same for both programs), so neither answers from a cached prefix."""
    best: dict[str, dict] = {}
    for prompt in prompts:
        runs = {"llama.cpp": worker.run(prompt, opts.new_tokens)}
        for name, engine in engines.items():
            runs[name] = loraserve_stream(engine, prompt, adapter, opts.new_tokens)
        for name, run in runs.items():
            kept = best.setdefault(name, dict(run))
            kept["ttft"], kept["tpot"] = min(kept["ttft"], run["ttft"]), min(kept["tpot"], run["tpot"])
    return best


def report(case: str, best: dict[str, dict], engines: dict[str, LLMEngine], bandwidth: float) -> None:
    theirs = best["llama.cpp"]
    print(f"{case}: llama.cpp TTFT {1e3 * theirs['ttft']:.1f} ms, TPOT {1e3 * theirs['tpot']:.2f} ms")
    for name, engine in engines.items():
        mine = best[name]
        read = decode_weight_bytes(engine)
        ratio = theirs["tpot"] / mine["tpot"]
        pairs = zip(mine["token_ids"], theirs["token_ids"])
        same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(mine["token_ids"]))
        print(
            f"  loraserve {name} ({engine.dtype}): TTFT {1e3 * mine['ttft']:.1f} ms, "
            f"TPOT {1e3 * mine['tpot']:.2f} ms = {ratio:.2f}x llama.cpp's speed "
            f"({'met' if ratio >= 1 else 'MISSED'}: goal TPOT <= llama.cpp's); weights read "
            f"{read / 1e6:.0f} MB/token = {100 * read / mine['tpot'] / bandwidth:.0f}% of copy bandwidth; "
            f"first {same} greedy tokens as llama.cpp's",
            flush=True,
        )


if __name__ == "__main__":
    main()
