"""Routing overhead of the Ray Serve scale-out, per request, on this machine.

One short LMI request (1 new token on a tiny random Llama, with a LoRA adapter) timed N times
sequentially on each path; the engine work is the same, so the differences are the overhead:
  (a) in process: the handler's typed generate on a started engine (a replica's work per request);
  (b) Ray handle -> engine replica (Ray's router with the adapter as multiplexed id, one actor call);
  (c) HTTP -> Ray Serve proxy -> ingress (loraserve's routes) -> replica: what a client sees;
  (d) HTTP -> ``loraserve serve`` (one machine: front end -> worker process), for comparison.

    python benchmarks/bench_ray_routing.py [--requests 200] [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from loraserve.testing.server import ServerProcess, free_port
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

BODY = {
    "inputs": "the quick brown fox",
    "adapters": "a",
    "parameters": {"max_new_tokens": 1, "ignore_eos": True},
}


def timed(call: Callable[[], object], count: int) -> list[float]:
    for _ in range(5):  # warm-up: first loads, JIT-ish caches, connections
        call()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def summary(name: str, times: list[float], reference: float | None) -> float:
    median = statistics.median(times)
    p90 = sorted(times)[int(0.9 * len(times)) - 1]
    extra = "" if reference is None else f"   overhead {median - reference:+7.2f} ms"
    print(f"{name:<44} median {median:7.2f} ms   p90 {p90:7.2f} ms{extra}")
    return median


def build_model(root: Path) -> Path:
    base = make_tiny_llama(root / "weights")
    model = root / "store" / "tiny"
    make_peft_adapter(base, model / "adapters" / "a", rank=4)
    (model / "serving.properties").write_text(
        f"option.model_id={base}\noption.dtype=fp32\noption.max_lora_rank=8\noption.max_model_len=256\n"
        "option.threads=1\n"
    )
    return model


def typed_request():
    """BODY as the ingress's LMI route parses it: the typed request a replica is called with."""
    from loraserve.specs import lmi
    from loraserve.specs.base import parse

    return lmi.to_generate(parse(lmi.LmiRequest, BODY))


def in_process(model: Path, count: int) -> list[float]:
    from loraserve.config import ModelConfig
    from loraserve.handlers import builtin_llm
    from loraserve.handlers.io import Input

    async def main() -> list[float]:
        warm = Input()
        warm.properties.update(ModelConfig.from_directory(model).handler_properties(model))
        await builtin_llm.handle(warm)
        await asyncio.to_thread(builtin_llm.engine().register_adapter, "a", model / "adapters" / "a")
        loop = asyncio.get_running_loop()

        message = typed_request()

        def call() -> None:
            asyncio.run_coroutine_threadsafe(builtin_llm.generate(message), loop).result()

        times = await asyncio.to_thread(timed, call, count)
        builtin_llm.engine().stop()
        return times

    return asyncio.run(main())


def on_ray(model: Path, count: int, replicas: int) -> tuple[list[float], list[float]]:
    import ray
    from ray import serve

    from loraserve.ray_serve.adapter_store import AdapterRef
    from loraserve.ray_serve.app import ENGINE_DEPLOYMENT, build_app
    from loraserve.ray_serve.config import RayAppConfig

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = RayAppConfig(model_dir=model, replicas=replicas, num_cpus_per_replica=0.5)
        serve.run(build_app(config), name=config.app_name, route_prefix="/")
        engine = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=config.app_name)
        message = typed_request()
        entry = json.loads((config.loraserve_dir / "state.json").read_text())["models"]["tiny"]["adapters"][0]
        refs = [AdapterRef.of(entry)]
        routed = engine.options(multiplexed_model_id="a")
        handle_times = timed(lambda: routed.generate.remote(message, refs).result(), count)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            http_times = timed(lambda: client.post("/invocations", json=BODY).raise_for_status(), count)
        return handle_times, http_times
    finally:
        serve.shutdown()
        ray.shutdown()


def one_server(model: Path, count: int) -> list[float]:
    with ServerProcess(["--model-store", str(model.parent)]) as server:
        return timed(lambda: server.client.post("/invocations", json=BODY).raise_for_status(), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        direct = in_process(model, args.requests)
        handle, http = on_ray(model, args.requests, args.replicas)
        single = one_server(model, args.requests)
    print(f"\n{args.requests} sequential requests, 1 new token, tiny Llama + rank-4 adapter")
    reference = summary("(a) in process: built-in handler", direct, None)
    summary(f"(b) Ray handle -> replica ({args.replicas} replica(s))", handle, reference)
    summary("(c) HTTP -> Ray proxy -> ingress -> replica", http, reference)
    summary("(d) HTTP -> loraserve serve (one machine)", single, reference)


if __name__ == "__main__":
    main()
