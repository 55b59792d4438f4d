"""The console's figures without a browser: the token-rate window and TTFT percentiles as
tables, and ``ServerMetrics`` counting a stream's tokens as they pass (not when it ends), per
label, with the per-label figures leaving with their adapter."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from loraserve.api.console_state import NO_TRAFFIC, traffic_rows
from loraserve.serving.metrics import ServerMetrics
from loraserve.serving.recent import LabelFigures, RateWindow, percentile
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.frames import ReplyKind


@pytest.mark.parametrize(
    "adds,now,rate",
    [
        ([], 100.0, 0.0),
        ([(50, 100.0)], 100.0, 50 / 9),  # 9 whole seconds and none of the current one
        ([(50, 100.0)], 100.5, 50 / 9.5),
        ([(10, 95.2), (10, 99.9), (10, 100.1)], 100.5, 30 / 9.5),
        ([(10, 90.9), (10, 99.1)], 100.5, 10 / 9.5),  # second 90 is out of the window 91..100
        ([(10, 100.0)], 110.0, 0.0),  # a whole window later: nothing recent
        ([(10, 100.0), (7, 110.0)], 110.0, 7 / 9),  # the ring reuses second 100's bucket
    ],
)
def test_rate_window(adds, now, rate):
    window = RateWindow(10)
    for count, at in adds:
        window.add(count, at)
    assert window.rate(now) == pytest.approx(rate)


@pytest.mark.parametrize(
    "values,q,expected",
    [
        ([], 50, None),
        ([0.3], 50, 0.3),
        ([0.3], 95, 0.3),
        ([0.4, 0.1, 0.3, 0.2], 50, 0.2),
        ([0.4, 0.1, 0.3, 0.2], 95, 0.4),
        ([float(i) for i in range(1, 101)], 95, 95.0),
        ([float(i) for i in range(1, 101)], 50, 50.0),
    ],
)
def test_percentile_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_label_figures_keep_a_bounded_sample():
    figures = LabelFigures()
    for i in range(1000):
        figures.ttfts.append(i / 1000)
    summary = figures.summary(now=0.0)
    assert summary["ttft_samples"] == 256 and summary["ttft_p50_s"] >= 0.744  # the last 256 only


class Streaming:
    """A model whose one call streams the chunks a test puts on its queue."""

    def __init__(self, adapters: set[str]) -> None:
        self.name, self.registry = "m", adapters
        self.chunks: asyncio.Queue = asyncio.Queue()

    async def infer(self) -> WorkerReply:
        return WorkerReply(ReplyKind.GENERATE, None, self.chunks)


def test_streamed_tokens_count_as_they_pass_and_per_label():
    async def run() -> None:
        metrics, model = ServerMetrics(), Streaming({"shouty"})
        reply = await metrics.observe("m", "shouty", model.infer())
        for _ in range(3):
            model.chunks.put_nowait(SimpleNamespace(text="A"))
            await reply.stream.get()
        assert metrics.generated_tokens == 3  # before the stream ends
        live = metrics.figures("m")["shouty"]
        assert live["generated_tokens"] == 3 and live["requests"] == 0 and live["tokens_per_s"] > 0
        assert live["ttft_samples"] == 1 and live["ttft_p50_s"] == live["ttft_p95_s"] >= 0
        model.chunks.put_nowait(None)
        assert await reply.stream.get() is None
        await asyncio.gather(*metrics._streams)
        done = metrics.figures("m")["shouty"]
        assert done["requests"] == 1 and done["errors"] == 0 and done["generated_tokens"] == 3
        assert metrics.generated_tokens == 3  # not counted again at the end
        model.registry.discard("shouty")
        metrics.prune([model])  # type: ignore[list-item]
        assert metrics.figures("m") == {} and metrics.generated_tokens == 3

    asyncio.run(run())


def test_a_whole_answer_counts_when_it_returns():
    async def answer() -> WorkerReply:
        output = {"code": 200, "properties": {"x-loraserve-generated-tokens": "5"}, "content": []}
        return WorkerReply(ReplyKind.DJL, output)

    metrics = ServerMetrics()
    asyncio.run(metrics.observe("m", "", answer()))
    figures = metrics.figures("m")[""]
    assert figures["generated_tokens"] == 5 and figures["requests"] == 1 and figures["ttft_samples"] == 0
    assert metrics.generated_tokens == 5 and metrics.rate.rate(time.monotonic()) > 0


def test_traffic_rows_list_the_base_every_adapter_and_shared_labels_with_traffic():
    busy = {**NO_TRAFFIC, "requests": 2}
    figures = {"shouty": busy, "other": busy, "gone": busy}  # "gone": pruned at the next scrape
    rows = traffic_rows(figures, {"shouty": "resident", "signed": "registered"})
    assert [(r["adapter"], r["tier"], r["requests"]) for r in rows] == [
        ("", "base", 0),
        ("shouty", "resident", 2),
        ("signed", "registered", 0),
        ("other", "-", 2),
    ]
