"""What transformers (+ PEFT) itself generates: the reference every parity test compares with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from loraserve.engine import LLMEngine
    from loraserve.model.batch import PrefillSpan
    from loraserve.model.layer_ops import AttentionSpec


def cached_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    """transformers' own cached greedy decoding (what ``generate`` does, without its knobs), with
    each chosen token's log-probability."""
    tokens, logprobs, cache = [], [], None
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=ids, cache=cache, use_cache=True)
            cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
            logits = out.logits[0, -1].float()
            token = int(logits.argmax())
            tokens.append(token)
            logprobs.append(float(logits[token] - torch.logsumexp(logits, -1)))
            ids = torch.tensor([[token]])
    return tokens, logprobs


def last_logits(model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    """The whole vocabulary's fp32 logits after ``prompt``."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt])).logits[0, -1].float()


def engine_with_adapters(base: Path, adapters: dict[str, Path], **config: Any) -> LLMEngine:
    """An fp32 engine on ``base`` (128-token context unless ``config`` says otherwise) with
    ``adapters`` registered by name: what the parity tests compare with the reference."""
    from loraserve.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model_id=str(base), **{"dtype": "fp32", "max_model_len": 128, **config}))
    for name, path in adapters.items():
        engine.register_adapter(name, path)
    return engine


def span_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    span: PrefillSpan,
    spec: AttentionSpec,
) -> torch.Tensor:
    """A prompt span's attention written out in fp32: its queries (rows of q (T, H, d)) over its
    visible positions in the paged caches (N, kvh, bs, d): softmax(q k^T * scale) v, (n, H, d)."""
    kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
    total = span.past + span.length
    keys = k_cache[span.blocks].transpose(0, 1).reshape(kv_heads, -1, dim)[:, :total]
    values = v_cache[span.blocks].transpose(0, 1).reshape(kv_heads, -1, dim)[:, :total]
    query = q[span.start : span.start + span.length].transpose(0, 1).float()  # (H, n, d)
    group = q.shape[1] // kv_heads
    keys, values = keys.float().repeat_interleave(group, 0), values.float().repeat_interleave(group, 0)
    scores = query @ keys.transpose(1, 2) * spec.scale
    if spec.softcap:
        scores = torch.tanh(scores / spec.softcap) * spec.softcap
    positions = torch.arange(span.past, total)[:, None]
    columns = torch.arange(total)[None, :]
    visible = (columns <= positions) & (columns > positions - (spec.window or total + 1))
    return (scores.masked_fill(~visible, float("-inf")).softmax(-1) @ values).transpose(0, 1)


def assert_span_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    span: PrefillSpan,
    spec: AttentionSpec,
) -> None:
    """out's rows of ``span`` are ``span_attention``'s: to a few fp32 ulps, or within bf16's step."""
    expected = span_attention(q, k_cache, v_cache, span, spec)
    tolerance = 1e-5 if out.dtype == torch.float32 else 3e-2
    actual = out[span.start : span.start + span.length].float()
    assert torch.allclose(actual, expected, atol=tolerance, rtol=tolerance), (span.length, span.past)
