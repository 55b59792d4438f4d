"""How long a model is gone after its worker is SIGKILLed, on an idle and on a busy machine.

Starts ``loraserve serve`` on the demo store (SmolLM2-135M, converted once; ``--tiny`` uses a
random tiny Llama instead), kills the model's worker ``--kills`` times and reports, per kill, the
seconds until ``/ping`` is healthy again and until the next generate request (with an adapter)
answers 200. ``--busy N`` runs N processes that spin on the CPU the whole time, as other work on
a shared machine does. The server's log is scanned for the worker's own account of where the
time went (kernels loaded or built, model loaded, KV cache allocated).

    python benchmarks/bench_recovery.py --busy 0 --busy 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loraserve.model.hardware import cpu_info
from loraserve.testing.server import ServerProcess


def _spin(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _store(tiny: bool, root: Path) -> tuple[Path, str, str]:
    """(model store, model name, adapter name)."""
    if not tiny:
        from loraserve.cli import demo_store

        return demo_store(), "smollm2", "signed"
    from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

    base = make_tiny_llama(root / "weights")
    model = root / "store" / "tiny"
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    (model / "serving.properties").write_text(f"option.model_id={base}\noption.dtype=auto\n")
    return root / "store", "tiny", "qv"


def _worker_pid(server: ServerProcess, model: str) -> int:
    described = server.client.get(f"/models/{model}").json()[0]["models"][0]
    return next(w["pid"] for w in described["workerGroups"][0]["workers"] if w["status"] == "READY")


def _kill_once(server: ServerProcess, model: str, adapter: str) -> tuple[float, float]:
    pid = _worker_pid(server, model)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    ping = None
    while True:
        try:
            healthy = server.client.get("/ping").status_code == 200
        except httpx.TransportError:
            healthy = False
        if healthy and _worker_pid_or_none(server, model) not in (None, pid):
            ping = time.monotonic() - killed
            break
        assert time.monotonic() - killed < 600, "the worker never came back"
        time.sleep(0.05)
    body = {"inputs": "Hello", "adapters": adapter, "parameters": {"max_new_tokens": 4}}
    while server.client.post(f"/predictions/{model}", json=body, timeout=600).status_code != 200:
        time.sleep(0.05)
    return ping, time.monotonic() - killed


def _worker_pid_or_none(server: ServerProcess, model: str) -> int | None:
    try:
        return _worker_pid(server, model)
    except (StopIteration, KeyError, IndexError, httpx.HTTPError):
        return None


def _phases(log: str) -> list[str]:
    """The worker's own timing lines (kernels, model load, KV cache) from the server log."""
    wanted = re.compile(
        r"native CPU kernels .* in [\d.]+ s|compiling the native|loaded .* in [\d.]+ ?s|"
        r"KV cache.*[\d.]+ ?s|worker .*(ready|started).*"
    )
    return [line.strip()[-160:] for line in log.splitlines() if wanted.search(line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, action="append", help="CPU-spinning processes (repeatable)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a random tiny Llama instead of SmolLM2")
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU ISA level {cpu.isa}, {os.cpu_count()} cores; model {'tiny' if args.tiny else 'SmolLM2-135M'}")
    with tempfile.TemporaryDirectory() as tmp:
        store, model, adapter = _store(args.tiny, Path(tmp))
        log_path = Path(tmp) / "server.log"
        with ServerProcess(["--model-store", str(store)], log_path=log_path, ready_timeout_s=900) as server:
            for busy in args.busy or [0, 2]:
                stop = multiprocessing.Event()
                spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(busy)]
                for spinner in spinners:
                    spinner.start()
                try:
                    time.sleep(1.0)
                    load = os.getloadavg()[0]
                    times = [_kill_once(server, model, adapter) for _ in range(args.kills)]
                finally:
                    stop.set()
                    for spinner in spinners:
                        spinner.join()
                pings, answers = [t[0] for t in times], [t[1] for t in times]
                print(
                    f"busy={busy} (load avg {load:.1f}): back on /ping after "
                    f"median {statistics.median(pings):.1f} s (max {max(pings):.1f}); first answer after "
                    f"median {statistics.median(answers):.1f} s (max {max(answers):.1f})"
                )
        print("worker's own account (last kill):")
        for line in _phases(log_path.read_text(errors="replace"))[-6:]:
            print("  ", line)


if __name__ == "__main__":
    main()
