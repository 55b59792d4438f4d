"""The sampler's per-row controls and log-probabilities against transformers (+ PEFT) on a tiny
model: every row of one mixed batch with its own settings, each equal to a reference decoding
loop built from transformers' own logits processors (OpenAI's presence/frequency penalty, which
transformers lacks, by its documented formula)."""

from __future__ import annotations

import pytest
import torch

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.engine.sampling import apply_min_p
from loraserve.errors import BadRequestError
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

PROMPT = "the quick brown fox jumps over"
NEW = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("controls")
    base = make_tiny_llama(root / "base")
    adapter = make_peft_adapter(base, root / "qv", rank=4)
    engine = LLMEngine(
        EngineConfig(
            model_id=str(base), dtype="fp32", max_model_len=96, max_lora_rank=8, max_num_batched_tokens=32
        )
    )
    engine.register_adapter("qv", adapter)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    return engine, model, adapter


def reference_greedy(model, ids: list[int], params: SamplingParams, eos: int) -> list[int]:
    """transformers' processors, in the engine's (vLLM's) order, then argmax."""
    from transformers import (
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SequenceBiasLogitsProcessor,
    )

    processors = []
    if params.logit_bias:
        processors.append(SequenceBiasLogitsProcessor({(t,): b for t, b in params.logit_bias.items()}))
    if params.min_tokens:
        ended = [eos, *params.stop_token_ids]
        processors.append(MinNewTokensLengthLogitsProcessor(len(ids), params.min_tokens, ended))
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    out: list[int] = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(params.max_new_tokens):
            input_ids = torch.tensor([seq])
            scores = model(input_ids).logits[:, -1].float()
            for processor in processors:
                scores = processor(input_ids, scores)
            if out:  # OpenAI: logit -= count * frequency + (count > 0) * presence, generated tokens
                counts = torch.bincount(torch.tensor(out), minlength=scores.shape[1]).float()
                scores = scores - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
            token = int(scores.argmax())
            out.append(token)
            seq.append(token)
            if len(out) >= params.min_tokens and (token == eos or token in params.stop_token_ids):
                break
    return out


def test_each_row_of_a_mixed_batch_gets_its_own_controls(setup):
    engine, model, _ = setup
    ids = engine.tokenizer.encode(PROMPT)
    plain = engine.generate([ids], None, SamplingParams(max_new_tokens=NEW))[0].token_ids
    rows = [
        SamplingParams(max_new_tokens=NEW),
        SamplingParams(max_new_tokens=NEW, logit_bias={plain[2]: -100.0, 7: 4.0}),
        SamplingParams(max_new_tokens=NEW, presence_penalty=1.5),
        SamplingParams(max_new_tokens=NEW, frequency_penalty=2.0),
        SamplingParams(
            max_new_tokens=NEW, presence_penalty=-0.5, frequency_penalty=0.7, repetition_penalty=1.3
        ),
        SamplingParams(max_new_tokens=NEW, stop_token_ids=[plain[3]]),
        SamplingParams(
            max_new_tokens=NEW, stop_token_ids=[plain[1]], min_tokens=5, logit_bias={plain[1]: 3.0}
        ),
    ]
    results = engine.generate([ids] * len(rows), [None] * len(rows), rows)
    for params, result in zip(rows, results):
        expected = reference_greedy(model, ids, params, eos=1)
        assert result.token_ids == expected, params
    assert results[0].token_ids != results[1].token_ids and plain[2] not in results[1].token_ids
    assert results[5].token_ids == plain[:4] and results[5].finish_reason == "stop_sequence"
    assert results[5].text == engine.tokenizer.decode(plain[:3])  # the stop token has no text
    assert len(results[6].token_ids) >= 5


def test_min_p_keeps_what_transformers_keeps():
    from transformers import MinPLogitsWarper

    torch.manual_seed(0)
    for min_p in (0.01, 0.1, 0.5):
        logits = torch.randn(300) * 3
        ours = torch.isfinite(apply_min_p(logits, min_p))
        theirs = torch.isfinite(MinPLogitsWarper(min_p)(None, logits.view(1, -1)).view(-1))
        assert torch.equal(ours, theirs)


def test_seeded_min_p_sampling_is_reproducible_and_stays_in_the_kept_set(setup):
    engine, _, _ = setup
    params = SamplingParams(
        max_new_tokens=NEW,
        do_sample=True,
        temperature=1.3,
        min_p=0.2,
        seed=7,
        ignore_eos=True,
        logprobs=True,
        top_logprobs=20,
    )
    first, second = engine.generate([PROMPT, PROMPT], None, params)
    assert first.token_ids == second.token_ids


def test_top_logprobs_and_prompt_logprobs_equal_transformers_and_peft(setup):
    from peft import PeftModel

    engine, model, adapter = setup
    long_prompt = " ".join([PROMPT] * 4)  # > max_num_batched_tokens: the prompt is scored in chunks
    ids = engine.tokenizer.encode(long_prompt)
    assert len(ids) > 32
    params = SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=5, prompt_logprobs=3)
    engine.generate([ids], None, SamplingParams(max_new_tokens=1))  # its blocks now in the prefix cache
    peft_model = PeftModel.from_pretrained(model, adapter, adapter_name="qv")
    seqs = [engine.add_request(ids, name, params) for name in (None, "qv")]
    while engine.has_work():
        engine.step()
    for seq, name in zip(seqs, (None, "qv")):
        with torch.no_grad():
            if name is None:
                with peft_model.disable_adapter():
                    logits = peft_model(torch.tensor([seq.all_ids])).logits[0].float()
            else:
                logits = peft_model(torch.tensor([seq.all_ids])).logits[0].float()
        reference = torch.log_softmax(logits, -1)
        assert len(seq.prompt_logprobs) == len(ids) - 1
        for position, scored in enumerate(seq.prompt_logprobs):
            assert scored.token_id == ids[position + 1]
            assert scored.logprob == pytest.approx(float(reference[position, ids[position + 1]]), abs=1e-4)
            top = torch.topk(reference[position], 3)
            assert [t for t, _ in scored.top] == top.indices.tolist()
            assert [v for _, v in scored.top] == pytest.approx(top.values.tolist(), abs=1e-4)
        for step, (token, logprob) in enumerate(zip(seq.output_ids, seq.logprobs)):
            row = reference[len(ids) - 1 + step]
            assert logprob == pytest.approx(float(row[token]), abs=1e-4)


def test_stop_string_in_the_token_that_reaches_the_length_limit_is_cut(setup):
    engine, _, _ = setup
    greedy = engine.generate([PROMPT], None, SamplingParams(max_new_tokens=NEW, ignore_eos=True))[0]
    before = engine.tokenizer.decode(greedy.token_ids[:-1])
    last = greedy.text[len(before) :]
    assert last.strip(), "the last token should have text"
    stop = last.strip()[-1]
    params = SamplingParams(max_new_tokens=NEW, ignore_eos=True, stop=[stop])
    result = engine.generate([PROMPT], None, params)[0]
    assert result.finish_reason == "stop_sequence"
    assert stop not in result.text and greedy.text.startswith(result.text)


def test_token_ids_outside_the_vocabulary_are_refused_by_name(setup):
    engine, _, _ = setup
    vocab = engine.runner.args.vocab_size
    for prompt, params, name in (
        ([1, vocab], SamplingParams(), "prompt"),
        ("hi", SamplingParams(logit_bias={vocab + 3: 1.0}), "logit_bias"),
        ("hi", SamplingParams(stop_token_ids=[vocab]), "stop_token_ids"),
    ):
        with pytest.raises(BadRequestError, match=name):
            engine.add_request(prompt, None, params)
    assert engine.stats()["waiting"] == 0
