"""loraserve against vLLM's CPU build on the same machine, in one run, interleaved.

SmolLM2-135M, ``--batch`` prompts of ``--prompt-len`` token ids, ``--new-tokens`` greedy tokens:
base; ``--batch`` distinct rank-16 all-linear adapters; ``--batch`` distinct rank-8 q,v adapters
(vLLM restricted to q,v: its best case); the distinct-adapter sweep; single-stream time per
output token; the matmul-peak ratio of a decode step. vLLM runs in its own venv
(``benchmarks/setup_vllm_cpu.sh``) behind ``vllm_worker.py``; each case alternates the two engines
``--repeats`` times and keeps each one's best (this machine is shared: timings are noisy); the
sweep visits its points round-robin, ``--repeats`` rounds, so its spread compares points
measured under the same load.

    benchmarks/setup_vllm_cpu.sh && python -m benchmarks.bench_vs_vllm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_engine import make_adapters, timed_run
from benchmarks.peer_worker import PeerWorker
from loraserve.engine import EngineConfig, LLMEngine
from loraserve.handlers.heap import freeze_loaded_heap
from loraserve.model.args import LORA_MODULES
from loraserve.model.default_model import smollm2_path
from loraserve.model.native import cpu_kernels
from loraserve.model.packed import pack_for_gemm

HERE = Path(__file__).resolve().parent
GOALS = {"base": 1.5, "all16": 2.5, "qv8": 1.5}


def vllm_env() -> dict[str, str]:
    """vLLM-CPU's environment: OpenMP threads bound to every core (its default leaves one idle),
    a KV-cache budget, no hub, none of loraserve's venv on its path."""
    cores = os.cpu_count() or 1
    return {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }


class VllmWorker(PeerWorker):
    """One vLLM ``LLM`` in its own process; ``run`` generates a batch and returns tok/s."""

    name = "vLLM"

    def __init__(self, python: Path, config: dict) -> None:
        super().__init__(python, "vllm_worker.py", config, vllm_env())

    def run(
        self, prompts: list[list[int]], adapters: list[str | None], new_tokens: int, ids: bool = False
    ) -> dict:
        return self.ask({"prompts": prompts, "adapters": adapters, "new_tokens": new_tokens, "ids": ids})


def interleaved(
    engine: LLMEngine,
    worker: VllmWorker | None,
    prompts,
    mine: list,
    theirs: list,
    new_tokens: int,
    repeats: int,
) -> tuple[dict, dict | None]:
    """Warm both on the mix, then alternate them ``repeats`` times; the best run of each."""
    timed_run(engine, prompts, mine, 2)
    if worker:
        worker.run(prompts, theirs, 2)
    best_ours, best_theirs = None, None
    for _ in range(repeats):
        best_ours = faster(best_ours, timed_run(engine, prompts, mine, new_tokens))
        if worker:
            time.sleep(0.5)  # let the other engine's OpenMP threads stop spinning
            best_theirs = faster(best_theirs, worker.run(prompts, theirs, new_tokens, ids=True))
            time.sleep(0.5)
    return best_ours, best_theirs  # type: ignore[return-value]


def faster(a: dict | None, b: dict | None) -> dict | None:
    """The run with more tokens a second (None: no run)."""
    if a is None or b is None:
        return a or b
    return a if a["tok_s"] >= b["tok_s"] else b


def matmul_peak(dtype: torch.dtype) -> float:
    """FLOP/s of the fastest large GEMM in ``dtype`` this machine runs: the best of torch.mm
    (MKL) at 2048^3 and 3072^3, a oneDNN-packed linear and loraserve's packed GEMM of 2048 rows,
    since on some CPUs (MKL on AMD) one of them is far below what the cores can do and would
    flatter the ratio."""
    best = 0.0
    for size in (2048, 3072):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        best = max(best, 2 * size**3 / min(_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(5)))
    if torch.backends.mkldnn.is_available():
        weight = torch.randn(3072, 2048).to(dtype)
        x = torch.randn(2048, 2048).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2048)
        seconds = min(
            _timed(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
            for _ in range(5)
        )
        best = max(best, 2 * 2048 * weight.numel() / seconds)
    kernels = cpu_kernels()
    if kernels is not None and kernels.packed_gemm_tiled(dtype == torch.bfloat16):  # loraserve's own
        weight, x = torch.randn(3072, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        packed, out = pack_for_gemm(weight), torch.empty(2048, 3072, dtype=dtype)
        seconds = min(_timed(lambda: kernels.packed_gemm(x, packed, None, out)) for _ in range(5))
        best = max(best, 2 * 2048 * weight.numel() / seconds)
    return best


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def step_flops(engine: LLMEngine, tokens: int) -> float:
    """GEMM FLOPs of one decode step of ``tokens`` tokens: every linear weight and the LM head."""
    weights = engine.runner.weights
    params = (
        sum(layer.fused(name).numel() for layer in weights.layers for name in ("qkv", "o", "gate_up", "down"))
        + weights.lm_head.numel()
    )
    return 2 * tokens * params


def model_path(name: str) -> Path:
    from benchmarks.shaped_models import SHAPES, shaped_model

    if name == "smollm2":
        return smollm2_path()
    return shaped_model(name) if name in SHAPES else Path(name)


def vllm_model_dir(path: Path, root: Path) -> Path:
    """A copy vLLM accepts: config.json without a ``quantization_config`` (left by GGUF conversion)."""
    out = root / "vllm-model"
    out.mkdir(exist_ok=True)
    for item in path.iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item)
    config = json.loads((path / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config))
    return out


def agreement(a: list[list[int]], b: list[list[int]] | None) -> str:
    if not b:
        return "n/a"
    same = sum(x == y for x, y in zip(a, b))
    return f"{same}/{len(a)} sequences token-identical"


def line(label: str, mine: dict, theirs: dict | None, goal: float | None = None) -> None:
    text = f"{label:34s} loraserve {mine['tok_s']:7.1f} tok/s"
    if theirs:
        ratio = mine["tok_s"] / theirs["tok_s"]
        text += f" | vLLM {theirs['tok_s']:7.1f} tok/s | ratio {ratio:5.2f}"
        if goal:
            text += f" (goal >= {goal}: {'met' if ratio >= goal else 'MISSED'})"
    print(text, flush=True)


def single_stream(
    engine: LLMEngine, worker: VllmWorker | None, prompt: list[int], new: int, repeats: int
) -> tuple[float, float | None]:
    """Time per output token at batch 1 (ms): (time for ``new`` tokens - time for 1) / (new - 1)."""

    def tpot(run) -> float:
        full, first = min(run(new) for _ in range(repeats)), min(run(1) for _ in range(repeats))
        return 1000 * (full - first) / (new - 1)

    mine = tpot(lambda n: timed_run(engine, [prompt], [None], n)["seconds"])
    theirs = tpot(lambda n: worker.run([prompt], [None], n)["seconds"]) if worker else None
    return mine, theirs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per case, best kept")
    parser.add_argument("--dtype", default="auto", help="loraserve's option.dtype")
    parser.add_argument("--vllm-python", type=Path, default=HERE / ".vllm-venv" / "bin" / "python")
    parser.add_argument(
        "--vllm-eager",
        action="store_true",
        help="vLLM without torch.compile (starts in seconds, not minutes; slower steps)",
    )
    parser.add_argument("--sweep", default="1,2,4,8,16,32", help="distinct adapters in the batch ('': none)")
    parser.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (the demo model), a shape of benchmarks/shaped_models.py (llama-3.2-1b, "
        "qwen2.5-0.5b, qwen3-0.6b: random weights in the real shapes) or a model directory",
    )
    parser.add_argument("--skip-qv", action="store_true", help="leave out the r8 q,v case")
    opts = parser.parse_args()
    torch.manual_seed(0)
    path, n, new = model_path(opts.model), opts.batch, opts.new_tokens
    engine = LLMEngine(
        EngineConfig(
            model_id=str(path),
            dtype=opts.dtype,
            max_rolling_batch_size=n,
            max_model_len=opts.prompt_len + new + 8,
            max_loras=n,
            max_lora_rank=16,
            max_cpu_loras=2 * n,
        )
    )
    freeze_loaded_heap()  # as a serving worker does once its model is loaded
    info, args = engine.info(), engine.runner.args
    vllm_dtype = info["dtype"]  # the engines' best dtype on this CPU is the same one
    print(
        f"machine: {os.cpu_count()} cores, isa {info['isa']} (torch: {info['torch_cpu_capability']}), "
        f"native bf16 {info['native_bf16']}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"loraserve dtype {info['dtype']}, kernels {info['kernels']}, linear {info['linear']}; "
        f"vLLM-CPU dtype {vllm_dtype} {'eager' if opts.vllm_eager else 'compiled'}; "
        f"model {opts.model}, batch {n}, prompt {opts.prompt_len}, {new} new tokens, "
        f"best of {opts.repeats} alternating runs",
        flush=True,
    )
    prompts = torch.randint(100, args.vocab_size - 100, (n, opts.prompt_len)).tolist()
    tmp = Path(tempfile.mkdtemp(prefix="loraserve-vs-vllm-"))
    all16 = [str(p) for p in make_adapters(tmp, args, n, 16, list(LORA_MODULES), "all16_")]
    qv8 = [str(p) for p in make_adapters(tmp, args, n, 8, ["q_proj", "v_proj"], "qv8_")]
    for name, paths in (("all16_", all16), ("qv8_", qv8)):
        for i, p in enumerate(paths):
            engine.register_adapter(f"{name}{i}", p)
    have_vllm = opts.vllm_python.is_file()
    if not have_vllm:
        print(f"no vLLM at {opts.vllm_python} (run benchmarks/setup_vllm_cpu.sh): loraserve only")
    model = vllm_model_dir(path, tmp)
    base_cfg = {
        "model": str(model),
        "dtype": vllm_dtype,
        "max_num_seqs": n,
        "max_model_len": opts.prompt_len + new + 8,
        "enforce_eager": opts.vllm_eager,
    }
    lora_cfg = base_cfg | {"enable_lora": True, "max_loras": n, "max_lora_rank": 16}
    results = {}

    def with_worker(config: dict, body) -> None:
        worker = VllmWorker(opts.vllm_python, config) if have_vllm else None
        try:
            body(worker)
        finally:
            if worker:
                worker.close()

    def base_cases(worker) -> None:
        results["base"] = interleaved(engine, worker, prompts, [None] * n, [None] * n, new, opts.repeats)
        mine, theirs = results["base"]
        line("base", mine, theirs, GOALS["base"])
        print(f"    greedy outputs: {agreement(mine['token_ids'], theirs and theirs['token_ids'])}")
        results["tpot"] = single_stream(engine, worker, prompts[0], new, opts.repeats)
        mine_ms, theirs_ms = results["tpot"]
        print(
            f"single stream TPOT: loraserve {mine_ms:.2f} ms"
            + (
                f" | vLLM {theirs_ms:.2f} ms ({'met' if mine_ms <= theirs_ms else 'MISSED'}: goal <= vLLM)"
                if theirs_ms
                else ""
            ),
            flush=True,
        )

    def lora_cases(worker) -> None:
        mine = [f"all16_{i}" for i in range(n)]
        results["all16"] = interleaved(engine, worker, prompts, mine, all16, new, opts.repeats)
        line(f"{n} distinct r16 all-linear", *results["all16"], GOALS["all16"])
        # round-robin over the points, best of the rounds per point: the flatness compares the
        # points with each other, so each round samples them all under the same load
        points = [int(x) for x in opts.sweep.split(",") if x.strip()]
        for _ in range(opts.repeats):
            for k in points:
                pair = interleaved(
                    engine,
                    worker,
                    prompts,
                    [f"all16_{i % k}" for i in range(n)],
                    [all16[i % k] for i in range(n)],
                    new,
                    1,
                )
                previous = results.get(f"sweep{k}", (None, None))
                results[f"sweep{k}"] = (faster(previous[0], pair[0]), faster(previous[1], pair[1]))
        for k in points:
            line(f"  sweep: {k:2d} distinct r16 in {n}", *results[f"sweep{k}"])

    def qv_cases(worker) -> None:
        results["qv8"] = interleaved(
            engine, worker, prompts, [f"qv8_{i}" for i in range(n)], qv8, new, opts.repeats
        )
        line(f"{n} distinct r8 q,v (vLLM: q,v only)", *results["qv8"], GOALS["qv8"])

    with_worker(base_cfg, base_cases)
    with_worker(lora_cfg, lora_cases)
    if not opts.skip_qv:
        with_worker(lora_cfg | {"lora_target_modules": ["q_proj", "v_proj"]}, qv_cases)
    if opts.sweep.strip():
        report_flatness(results, opts.sweep)
    peak = matmul_peak(engine.dtype)
    rate = step_flops(engine, n) / (results["base"][0]["step_ms"] / 1000)
    print(
        f"matmul peak ({info['dtype']}, best large GEMM): {peak / 1e9:.1f} GFLOP/s; base decode step "
        f"{results['base'][0]['step_ms']:.1f} ms = {rate / 1e9:.1f} GFLOP/s of GEMM work = "
        f"{rate / peak:.0%} of peak (goal >= 60%)"
    )
    print(f"load at the end {os.getloadavg()[0]:.1f} (other processes share these cores)")


def report_flatness(results: dict, sweep: str) -> None:
    for who, index in (("loraserve", 0), ("vLLM", 1)):
        rates = [
            results[f"sweep{k}"][index]["tok_s"] for k in sweep.split(",") if results[f"sweep{k}"][index]
        ]
        if rates:
            spread = max(rates) / min(rates) - 1
            print(f"sweep flatness, {who}: max/min - 1 = {spread:.0%} (goal within 15%)")


if __name__ == "__main__":
    main()
