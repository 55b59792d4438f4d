"""Runs inside llama-cpp-python's own venv (``setup_llama_cpp.sh``), driven by
``bench_vs_llama_cpp.py`` over stdin/stdout: one JSON command per line in, one JSON reply per
line out, so both programs run the same single stream interleaved. Not importable from
loraserve's venv.

    python llama_cpp_worker.py '{"model": GGUF, "lora": GGUF | null, "threads": 2, "n_ctx": 512}'
    stdin:  {"prompt": [ids...], "new_tokens": 64}
    stdout: @@ {"ttft": s, "tpot": s, "token_ids": [...]}
"""

from __future__ import annotations

import json
import sys
import time


def serve(config: dict) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=config["model"],
        lora_path=config.get("lora"),
        n_threads=config["threads"],
        n_threads_batch=config["threads"],
        n_ctx=config["n_ctx"],
        n_batch=config["n_ctx"],
        seed=0,
        verbose=False,
    )
    eos = llm.token_eos()

    def no_eos(_ids, logits):  # the same number of tokens as loraserve's ignore_eos
        logits[eos] = -float("inf")
        return logits

    print("@@", json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        ids: list[int] = []
        llm.reset()  # generate() would otherwise reuse the previous run's cache for a shared prefix
        began = time.perf_counter()
        first = 0.0
        for token in llm.generate(command["prompt"], temp=0.0, reset=True, logits_processor=[no_eos]):
            if not ids:
                first = time.perf_counter()
            ids.append(token)
            if len(ids) == command["new_tokens"]:
                break
        end = time.perf_counter()
        reply = {"ttft": first - began, "tpot": (end - first) / max(1, len(ids) - 1), "token_ids": ids}
        print("@@", json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
