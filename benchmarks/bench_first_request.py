"""Load on first request: from the first request naming an adapter nobody registered to its
first streamed token, with the adapter under a local resolver root and under an S3 one (moto's
standalone server over HTTP, in this process), against a registered adapter's first token. And
while those lookups run, the first-token latency of another adapter's requests: a fetch must
not stall them.

Uses the demo model (SmolLM2-135M, converted once) with random r16 all-linear adapters in its
shapes (``--tiny``: a random tiny Llama).

    python benchmarks/bench_first_request.py --adapters 6
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import boto3
import httpx
from moto.server import ThreadedMotoServer

from loraserve.model.hardware import cpu_info
from loraserve.testing.server import ServerProcess, free_port
from loraserve.testing.tiny import make_peft_adapter

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _base(tiny: bool, root: Path) -> Path:
    if tiny:
        from loraserve.testing.tiny import make_tiny_llama

        return make_tiny_llama(root / "weights")
    from loraserve.model.default_model import smollm2_path

    return smollm2_path()


def _ttft(base_url: str, model: str) -> float:
    """Seconds to the first streamed token of a short completion naming ``model``."""
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{model}: {reply.status_code} {reply.read()[:300]!r}")
        for line in reply.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.monotonic() - started
    raise RuntimeError(f"{model}: no token streamed")


class _Background:
    """A client asking for a registered adapter over and over, noting each first-token time."""

    def __init__(self, base_url: str, model: str) -> None:
        self.base_url, self.model = base_url, model
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.times.append(_ttft(self.base_url, self.model))

    def __enter__(self) -> _Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _upload(client: object, folder: Path, prefix: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "adapters", f"{prefix}/{path.name}")  # type: ignore[attr-defined]


def _ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1e3:.0f} ms, max {max(values) * 1e3:.0f} ms (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=6, help="first requests per source kind")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    root = Path(tempfile.mkdtemp(prefix="bench-first-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
    creds = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    s3.create_bucket(Bucket="adapters")
    try:
        base = _base(args.tiny, root)
        model_dir = root / "store" / "base"
        make_peft_adapter(base, model_dir / "adapters" / "warm", rank=args.rank, target_modules=MODULES)
        local = root / "local"
        for i in range(args.adapters):
            made = make_peft_adapter(
                base, root / "made" / f"a{i}", rank=args.rank, target_modules=MODULES, seed=i
            )
            shutil.copytree(made, local / f"local-{i}")
            _upload(s3, made, f"lazy/s3-{i}")
        size = sum(p.stat().st_size for p in (local / "local-0").iterdir())
        (model_dir / "serving.properties").write_text(
            f"option.model_id={base}\noption.dtype=auto\noption.max_lora_rank={args.rank}\n"
            f"option.adapter_resolvers={local},s3://adapters/lazy\n"
        )
        env = {**creds, "LORASERVE_S3_ENDPOINT_URL": endpoint}
        with ServerProcess(["--model-store", str(root / "store")], env=env, ready_timeout_s=900) as server:
            url = server.base_url
            for _ in range(3):
                _ttft(url, "base:warm")  # warm-up: kernels, caches
            idle = [_ttft(url, "base:warm") for _ in range(8)]
            firsts: dict[str, list[float]] = {"local": [], "s3": []}
            with _Background(url, "base:warm") as background:
                time.sleep(0.5)
                for i in range(args.adapters):
                    for kind in ("local", "s3"):
                        firsts[kind].append(_ttft(url, f"base:{kind}-{i}"))
                during = list(background.times)
            again = [_ttft(url, f"base:s3-{i}") for i in range(args.adapters)]
        model = "tiny" if args.tiny else "SmolLM2-135M"
        print(f"CPU ISA level {cpu_info().isa}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        print(f"model {model}, adapters r{args.rank} all-linear, {size / 1e6:.1f} MB each")
        print(f"registered adapter, idle:              {_ms(idle)}")
        print(f"first request, local resolver root:    {_ms(firsts['local'])}")
        print(f"first request, S3 resolver root (moto): {_ms(firsts['s3'])}")
        print(f"S3 adapter, second request:            {_ms(again)}")
        print(f"registered adapter during the lookups: {_ms(during)}")
        slowdown = statistics.median(during) / statistics.median(idle)
        s3_vs_local = statistics.median(firsts["s3"]) / statistics.median(firsts["local"])
        print(f"ratio during/idle (p50): {slowdown:.2f}; first S3 / first local (p50): {s3_vs_local:.2f}")
    finally:
        moto.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
