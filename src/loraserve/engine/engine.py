"""``LLMEngine``: ``add_request`` / ``step`` / ``abort`` underneath, ``generate`` on top, and a
background loop that keeps stepping while requests are live (used by the server handler)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraserve.constraints import OutputConstraint
from loraserve.engine.activation import activation_start
from loraserve.engine.adapter_cache import AdapterCache, AdapterEntry
from loraserve.engine.adapter_prefetch import AdapterPrefetcher
from loraserve.engine.block_manager import BlockManager
from loraserve.engine.config import EngineConfig
from loraserve.engine.kv_budget import plan_kv_cache
from loraserve.engine.mixtures import PREFIX, Mixture, Mixtures
from loraserve.engine.model_loading import load_model
from loraserve.engine.output import OutputProcessor
from loraserve.engine.sampler import sample_tokens, score_rows
from loraserve.engine.scheduler import Scheduler
from loraserve.engine.sequence import Sequence, SequenceStatus, TokenEvent
from loraserve.engine.step_batch import build_step_batch, scored_positions
from loraserve.engine.structured import StructuredOutput, advance
from loraserve.errors import BadRequestError
from loraserve.model.peft_adapter import LoraWeights, load_peft_adapter, read_adapter_config
from loraserve.model.peft_config import base_model_mismatch
from loraserve.wire.messages import FinishReason
from loraserve.wire.sampling import SamplingParams

log = logging.getLogger("loraserve.engine")


@dataclass(slots=True)
class GenerationResult:
    request_id: int
    text: str
    token_ids: list[int]
    logprobs: list[float | None]
    finish_reason: FinishReason | None
    prompt_tokens: int


class LLMEngine:
    def __init__(self, config: EngineConfig, model_dir: Path | None = None) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        model = load_model(config, model_dir)
        self.device, self.dtype, self.model_path = model.device, model.dtype, model.path
        self.tokenizer, self.runner, self.base_names = model.tokenizer, model.runner, model.base_names
        self.kv = plan_kv_cache(
            config.kv_cache_memory,
            self.device,
            self.runner.kv_bytes_per_token(),
            config.block_size,
            self.runner.max_len,
            config.max_rolling_batch_size,
        )
        self.runner.allocate_kv_cache(self.kv.num_blocks, self.kv.block_size)
        log.info(
            "KV cache: %d blocks of %d tokens = %d tokens, %.1f MiB (%s); max_model_len %d; "
            "prefix caching %s",
            self.kv.num_blocks - 1,
            self.kv.block_size,
            self.kv.tokens,
            self.kv.bytes / 2**20,
            self.kv.source,
            self.runner.max_len,
            "on" if config.enable_prefix_caching else "off",
        )
        self.blocks = BlockManager(self.kv.num_blocks, self.kv.block_size, config.enable_prefix_caching)
        self.adapters = AdapterCache(
            config.max_loras,
            config.max_cpu_loras,
            self._load_adapter,
            self.runner.lora.load,
            self.runner.lora.clear,
            config.cpu_lora_bytes,
        )
        self.lock = threading.Condition()
        self.prefetch = AdapterPrefetcher(self.adapters, self.lock, self._changed)
        self.scheduler = Scheduler(
            config.max_rolling_batch_size,
            config.max_num_batched_tokens,
            self.adapters,
            config.lora_merge,
            self.blocks,
            None if config.lora_merge else self.prefetch,
        )
        self.mixtures = Mixtures(
            self.adapters, config.max_lora_rank, config.max_adapters_per_request, keep_idle=config.max_loras
        )
        self.eos_ids = self._eos_ids()
        self.outputs = OutputProcessor(self.tokenizer, self.eos_ids, self.runner.max_len)
        self.structured = StructuredOutput(self.tokenizer, self.runner.args.vocab_size, self.eos_ids)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._in_flight: set[Sequence] = set()  # the sequences of the forward pass now running
        self._epoch = 0  # bumped by every change that may let a blocked request run
        self._idle_epoch = -1  # the epoch at which a step last found nothing to run
        self.steps = 0
        self.computed_tokens = 0  # tokens run through the model (prompt chunks and decodes)
        self.generated_tokens = 0  # tokens sampled and emitted, as they are (the console's rate)
        self.last_step_tokens = 0

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} - {None}
        gen = self.model_path / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
        return ids  # type: ignore[return-value]

    def _load_adapter(self, entry: AdapterEntry) -> LoraWeights:
        """An adapter version into memory, ready to install (on the prefetcher's thread)."""
        if entry.name.startswith(PREFIX):  # a mixture: combined in memory, no file to read
            weights = self.mixtures.weights(entry.name)
        else:
            weights = load_peft_adapter(
                Path(entry.path), self.runner.args, self.config.max_lora_rank, self.dtype
            )
        return self._ready_to_install(weights)

    def _ready_to_install(self, weights: LoraWeights) -> LoraWeights:
        """The slot backend's install-ready copy, built on this (non-engine) thread; merged mode
        installs nothing in slots."""
        if not self.config.lora_merge:
            self.runner.lora.prepare(weights)
        return weights

    # -- adapters -------------------------------------------------------------------------
    def register_adapter(
        self,
        name: str,
        path: str | Path,
        pin: bool = False,
        preload: bool = True,
        identity: str | None = None,
    ) -> AdapterEntry:
        """Validate the PEFT adapter fully (off the lock), then add it; replaces ``name``.
        ``identity``: the registry's for this registration (``AdapterRecord.identity``)."""
        if not self.config.enable_lora:
            raise BadRequestError("LoRA is disabled for this model (option.enable_lora=false)")
        started = time.perf_counter()
        weights = load_peft_adapter(Path(path), self.runner.args, self.config.max_lora_rank, self.dtype)
        took = time.perf_counter() - started  # the adapter's first load (its stats show it)
        mismatch = base_model_mismatch(read_adapter_config(Path(path)), self.base_names)
        if mismatch:
            log.warning("adapter %s: %s", name, mismatch)
        if weights.invocation and self.config.lora_merge:
            raise BadRequestError(
                "activated LoRA (alora_invocation_tokens) cannot be merged: it applies to "
                "part of each sequence; serve it with option.lora_merge=false"
            )
        if preload:  # here, not on the engine thread at its first install
            self._ready_to_install(weights)
        with self.lock:
            entry = self.adapters.register(name, str(path), weights, pin, preload, identity, took)
            self._changed()
            return entry

    def unregister_adapter(self, name: str) -> None:
        """Requests already added keep the version they were added with and finish on it."""
        with self.lock:
            self.adapters.unregister(name)
            self._changed()

    def _changed(self) -> None:
        """Wake the loop: something it could not schedule may now fit. Call under the lock."""
        self._epoch += 1
        self.lock.notify_all()

    # -- requests -------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        adapter: str | Mixture | None = None,
        params: SamplingParams | None = None,
        on_event: Callable[[TokenEvent], Any] | None = None,
    ) -> Sequence:
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise BadRequestError("the prompt is empty")
        self._check_token_ids([] if isinstance(prompt, str) else ids, params)
        if len(ids) + params.max_new_tokens > self.runner.max_len:
            raise BadRequestError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds max_model_len {self.runner.max_len}"
            )
        if self.blocks.blocks_for(len(ids) + params.max_new_tokens) > self.blocks.usable_blocks:
            raise BadRequestError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds the KV cache ({self.kv.tokens} tokens, "
                "option.kv_cache_memory)"
            )
        # compiled before the lock (a cache hit when Generation.start compiled it in a thread)
        matcher = self.structured.matcher(params.constraint) if params.constraint is not None else None
        with self.lock:
            key = self.mixtures.hold(adapter)  # its version, until it ends
            if key is not None and not self.config.lora_merge:
                self.prefetch.want(key)  # read from disk (if it must be) while others decode
            try:
                variant = self.runner.rope.rope_offset(len(ids))
                invocation = self.adapters.invocation(key) if key is not None else None
                lora_from = activation_start(ids, invocation) if invocation else 0
                seq = Sequence(
                    ids, params, key, on_event, rope_variant=variant, lora_from=lora_from, matcher=matcher
                )
                self.scheduler.add(seq)
            except BaseException:
                if key is not None:
                    self.adapters.unhold(key)
                raise
            self._changed()
        return seq

    def compile_constraint(self, constraint: OutputConstraint) -> None:
        """Compile a structured-output constraint into the engine's cache, from any thread and
        never under the lock (``BadRequestError`` naming the problem when it cannot be), so that
        ``add_request`` only copies it."""
        self.structured.compile(constraint)

    def _check_token_ids(self, ids: list[int], params: SamplingParams) -> None:
        """Token ids from the client (a token-id prompt, logit_bias, stop_token_ids) must name
        tokens of this model's vocabulary."""
        vocab = self.runner.args.vocab_size
        for name, values in (
            ("prompt", ids),
            ("logit_bias", params.logit_bias),
            ("stop_token_ids", params.stop_token_ids),
        ):
            bad = next((t for t in values if type(t) is not int or not 0 <= t < vocab), None)
            if bad is not None:
                raise BadRequestError(
                    f"{name} holds token id {bad!r}, outside this model's vocabulary [0, {vocab})"
                )

    def abort(self, request_id: int) -> Sequence | None:
        """Stop a request wherever it is; its consumer gets a final ``aborted`` event. One in the
        step now running is stopped when that step ends: the forward pass may still be writing
        its KV blocks and reading its LoRA slot, so neither is given back before."""
        with self.lock:
            seq = self.scheduler.find(request_id)
            if seq is None:
                return None
            if seq in self._in_flight:
                seq.abort_requested = True
                return seq
            self._abort_now(seq)
            return seq

    def _abort_now(self, seq: Sequence) -> None:
        self.scheduler.abort(seq.request_id)
        self.emit(seq, TokenEvent(seq.request_id, -1, "", None, seq.finish_reason))
        self._changed()

    def step(self) -> list[Sequence]:
        """One iteration, each part by its owner: the scheduler picks sequences and token counts,
        the runner computes their logits, the scheduler advances them, the sampler and output
        stage add tokens and text. The lock is not held during the forward pass, so requests are
        added and aborted while the model runs. A failure fails the sequences it belongs to: a
        row's sampling its row, the forward pass its batch."""
        with self.lock:
            seqs = self.scheduler.schedule()
            failed = self._report_failed()
            if not seqs:
                self._idle_epoch = -1 if failed else self._epoch
                return failed
            try:
                if self.config.lora_merge:
                    self._switch_merge(seqs)
                batch = build_step_batch(seqs, self.runner, merged=self.config.lora_merge)
            except Exception as exc:  # not attributable to one row: the step's sequences fail
                return [*failed, *self._fail_step(seqs, exc)]
            self._in_flight = set(seqs)
        try:
            logits = self.runner.forward(batch)
        except Exception as exc:
            with self.lock:
                self._in_flight = set()
                return [*failed, *self._fail_step(seqs, exc)]
        with self.lock:
            self._in_flight = set()
            if batch.sampled_rows is not None and batch.sampled_rows < logits.shape[0]:
                self._score_prompts(seqs, logits[batch.sampled_rows :])
                logits = logits[: batch.sampled_rows]
            self.steps += 1
            self.last_step_tokens = sum(seq.new_tokens for seq in seqs)
            self.computed_tokens += self.last_step_tokens
            sampled = self.scheduler.postprocess(seqs)
            aborted = [seq for seq in seqs if seq.abort_requested]
            if aborted:  # stopped during the forward pass: no token for them
                rows = [row for row, seq in enumerate(sampled) if not seq.abort_requested]
                sampled, logits = [sampled[row] for row in rows], logits[rows]
                for seq in aborted:
                    self._abort_now(seq)
            return [*failed, *aborted, *self._append_tokens(sampled, logits)]

    def _score_prompts(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Prompt log-probs: the rows after the sampling ones score the next prompt token, per
        sequence in step order (``build_step_batch``). Call before ``postprocess``."""
        row = 0
        for seq in seqs:
            positions = scored_positions(seq)
            if not positions:
                continue
            rows = logits[row : row + len(positions)]
            row += len(positions)
            if positions.start != len(seq.prompt_logprobs):
                continue  # never expected: a gap would misalign the scores
            chosen = torch.tensor(
                seq.prompt_ids[positions.start + 1 : positions.stop + 1], device=rows.device
            )
            top = seq.params.prompt_logprobs or 0
            seq.prompt_logprobs.extend(score_rows(rows, chosen, [top] * len(positions)))

    def _fail_step(self, seqs: list[Sequence], exc: Exception) -> list[Sequence]:
        log.exception("engine step failed; failing its %d sequences", len(seqs))
        for seq in seqs:
            self.fail_sequence(seq, f"the model step failed: {exc}")
        return seqs

    def _append_tokens(self, seqs: list[Sequence], logits: torch.Tensor) -> list[Sequence]:
        """Sample, append and emit one token per sequence; returns those that finished."""
        tokens, logprobs = sample_tokens(seqs, logits, self.eos_ids, self.structured)
        finished = []
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            refused = None if token is None or seq.matcher is None else advance(seq.matcher, token)
            if token is None or refused:
                self.fail_sequence(seq, refused or _no_token(seq))
                finished.append(seq)
                continue
            event = self.outputs.append(seq, token, logprob, len(seqs))
            self.generated_tokens += 1
            if event.finish_reason is not None:
                self.scheduler.finish(seq)
                finished.append(seq)
            self.emit(seq, event)
            if seq.finish_reason is FinishReason.ERROR:
                finished.append(seq)  # its callback failed
        return finished

    def _report_failed(self) -> list[Sequence]:
        failed, self.scheduler.failed = self.scheduler.failed, []
        for seq in failed:
            self.emit(seq, TokenEvent(seq.request_id, -1, "", None, FinishReason.ERROR))
        return failed

    def fail_sequence(self, seq: Sequence, message: str) -> None:
        """Finish ``seq`` with an error, scrub what it wrote, tell its consumer."""
        if seq.status == SequenceStatus.FINISHED:
            return
        seq.finish_reason, seq.error = FinishReason.ERROR, message
        # its blocks may hold NaN, which masked reads would pass to their next user
        self.runner.zero_blocks(self.scheduler.finish(seq, discard=True))
        self.emit(seq, TokenEvent(seq.request_id, -1, "", None, FinishReason.ERROR))

    def emit(self, seq: Sequence, event: TokenEvent) -> None:
        """Call the consumer's callback; one that raises fails its own request only."""
        if seq.on_event is None:
            return
        try:
            seq.on_event(event)
        except Exception as exc:
            log.warning("request %d: event callback failed: %s", seq.request_id, exc)
            seq.on_event = None
            self.fail_sequence(seq, f"its event callback failed: {exc}")

    def _switch_merge(self, seqs: list[Sequence]) -> None:
        key = seqs[0].adapter
        name = None if key is None else f"{key[0]}@{key[1]}"
        if self.runner.merged.current == name:
            return
        self.runner.merged.unmerge()
        if key is not None:
            self.runner.merged.merge(name, self.adapters.weights(key))  # type: ignore[arg-type]

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def generate(
        self,
        prompts: list[str | list[int]],
        adapters: list[str | Mixture | None] | None = None,
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Submit all prompts together and run until every one is done."""
        adapters = adapters or [None] * len(prompts)
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        done = threading.Event()
        seqs = [self.add_request(p, a, s) for p, a, s in zip(prompts, adapters, plist)]
        if self._thread is None:
            while any(s.finish_reason is None for s in seqs):
                before = self.steps
                self.step()
                if self.steps == before:  # nothing could run: an adapter is being read off-thread
                    with self.lock:
                        self.lock.wait(0.01)
        else:
            while any(s.finish_reason is None for s in seqs):
                done.wait(0.01)
        return [
            GenerationResult(
                s.request_id, s.text, s.output_ids, s.logprobs, s.finish_reason, len(s.prompt_ids)
            )
            for s in seqs
        ]

    # -- background loop --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with self.lock:
            self._changed()
        if self._thread:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping:
            with self.lock:  # sleep while there is nothing to do, or nothing changed since a
                while not self._stopping and (  # step found nothing it could run: no busy spin
                    not self.scheduler.has_work() or self._idle_epoch == self._epoch
                ):
                    self.lock.wait()
            try:
                self.step()
            except Exception:  # a bug outside the per-sequence guards: fail all, keep the loop
                log.exception("engine step failed")
                self._fail_all()

    def _fail_all(self) -> None:
        with self.lock:
            for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                self.fail_sequence(seq, "the engine step failed; see the server log")

    def stats(self) -> dict[str, Any]:
        """What the engine holds now: the soak tests assert nothing leaked from these."""
        with self.lock:
            scheduler, blocks, adapters = self.scheduler, self.blocks, self.adapters.stats()
            return {
                "running": len(scheduler.running),
                "waiting": len(scheduler.waiting),
                "kv_blocks_total": blocks.usable_blocks,
                "kv_blocks_free": blocks.free_blocks,
                "kv_blocks_cached": len(blocks.cached),
                "kv_block_size": blocks.block_size,
                "kv_usage": 1 - blocks.free_blocks / blocks.usable_blocks,
                "prefix_cache_hit_rate": blocks.stats.hit_rate,
                "prefix_cache_queried_tokens": blocks.stats.queried_tokens,
                "prefix_cache_hit_tokens": blocks.stats.hit_tokens,
                "preemptions": scheduler.preemptions,
                "computed_tokens": self.computed_tokens,
                "generated_tokens": self.generated_tokens,
                "lora_refs": adapters["slot_refs"],
                "adapter_holds": adapters["holds"],
                "resident_adapters": adapters["resident"],
                "pinned_adapters": adapters["pinned"],
                "stale_adapters": adapters["stale"],
                "registered_adapters": adapters["registered"],
                "steps": self.steps,
                "service": {name or "": value for name, value in scheduler.fairness.counters.items()},
            }

    def info(self) -> dict[str, str]:
        """The hardware choices made at start-up: ISA, compute dtype, kernels, linear backend."""
        return self.runner.info()

    def memory_stats(self) -> dict[str, int]:
        return {
            "weights_bytes": self.runner.weights.nbytes(),
            "kv_cache_bytes": self.runner.kv_bytes(),
            "lora_stack_bytes": self.runner.lora.nbytes(),
            "adapter_cpu_bytes": self.adapters.memory_in_use(),
            "pid": os.getpid(),
        }


def _no_token(seq: Sequence) -> str:
    """Why sampling gave ``seq`` no token."""
    if seq.matcher is not None and seq.matcher.is_error():
        return f"structured output failed: {seq.matcher.get_error()}"
    return (
        "the model produced non-finite logits (NaN or inf) for this request; check the adapter's "
        "weights and the sampling parameters"
    )
