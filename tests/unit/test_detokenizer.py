"""Incremental detokenization gives the same text as decoding the whole output at once."""

from __future__ import annotations

import random

import pytest
from transformers import PreTrainedTokenizerFast

from loraserve.engine.detokenizer import IncrementalDetokenizer
from loraserve.testing.tiny import make_tokenizer

TEXT = ["hello world, this is a tiny tokenizer", "naïve café — 東京 ✓ ünïcödé", "a  b   c\n\nd"]


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style (Llama): '▁' for spaces, the decoder drops a leading one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>")


@pytest.fixture(params=["byte-level", "metaspace"])
def tokenizer(request, tmp_path):
    if request.param == "metaspace":
        return _metaspace_tokenizer()
    make_tokenizer(tmp_path)
    return PreTrainedTokenizerFast.from_pretrained(tmp_path)


def _check(tokenizer, ids: list[int]) -> None:
    full = tokenizer.decode(ids, skip_special_tokens=True)
    detokenizer = IncrementalDetokenizer(tokenizer)
    for end in range(1, len(ids) + 1):
        text = detokenizer.update(ids[:end], final=end == len(ids))
        assert full.startswith(text), (end, text, full)
    assert text == full


@pytest.mark.parametrize("sample", TEXT)
def test_encoded_text_comes_back_token_by_token(tokenizer, sample):
    _check(tokenizer, tokenizer.encode(sample, add_special_tokens=False))


def test_random_ids_with_special_tokens_match_a_full_decode(tokenizer):
    generator = random.Random(0)
    for _ in range(20):  # random byte tokens split multi-byte characters anywhere
        _check(tokenizer, [generator.randrange(len(tokenizer)) for _ in range(40)])


def test_each_update_decodes_a_window_not_the_whole_output(tokenizer):
    ids = tokenizer.encode(" ".join(TEXT * 20), add_special_tokens=False)
    lengths = []

    class Counting:
        def decode(self, window, **kwargs):
            lengths.append(len(window))
            return tokenizer.decode(window, **kwargs)

    detokenizer = IncrementalDetokenizer(Counting())
    for end in range(1, len(ids) + 1):
        detokenizer.update(ids[:end])
    assert len(ids) > 200 and max(lengths) < 20


class _Chars:
    """A tokenizer whose token i is the i-th character of its alphabet."""

    alphabet = "abcdefghij. "

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.alphabet[i] for i in ids)


def test_a_stop_string_across_tokens_is_held_back_so_the_stream_equals_the_text():
    from loraserve.engine.output import OutputProcessor
    from loraserve.engine.sequence import Sequence
    from loraserve.wire.sampling import SamplingParams

    chars = _Chars()
    outputs = OutputProcessor(chars, eos_ids={99}, max_len=100)
    for stop, answer, expected in (("cd", "abcde", "ab"), ("c.", "abcab", "abcab"), ("xy", "abc", "abc")):
        seq = Sequence([0], SamplingParams(max_new_tokens=len(answer), stop=[stop, "zz"]), None)
        events = [outputs.append(seq, chars.alphabet.index(ch), None, 1) for ch in answer]
        events = events[: next((i + 1 for i, e in enumerate(events) if e.finish_reason), len(events))]
        assert "".join(e.text for e in events) == seq.text == expected
