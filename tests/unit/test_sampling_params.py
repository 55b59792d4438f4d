"""SamplingParams refuses what the sampler cannot use, naming the field (defence in depth:
the HTTP front validates too, but the engine never trusts its caller)."""

from __future__ import annotations

import math

import pytest
import torch

from loraserve.engine.sampling import sample_row
from loraserve.errors import BadRequestError
from loraserve.wire.sampling import SamplingParams


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -0.5),
        ("temperature", "1"),
        ("repetition_penalty", 1e-40),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.nan),
        ("repetition_penalty", math.inf),
        ("repetition_penalty", 1000.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_k", 2**40),
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.0),
        ("max_new_tokens", math.inf),
        ("max_new_tokens", 2**31),
        ("max_new_tokens", True),
        ("seed", -1),
        ("seed", 2**53),
        ("seed", 2**70),
        ("seed", 1.5),
        ("temperature", 101.0),
        ("do_sample", "false"),
        ("ignore_eos", "false"),
        ("details", 1),
        ("logprobs", None),
        ("stop", "abc"),
        ("stop", [1]),
    ],
)
def test_out_of_range_values_are_refused_by_name(field, value):
    with pytest.raises(BadRequestError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 0.0},
        {"temperature": 1e-6, "do_sample": True},
        {"repetition_penalty": 100.0},
        {"repetition_penalty": 0.01},
        {"top_p": 1.0, "top_k": 0},
        {"seed": 0},
        {"seed": 2**53 - 1},
        {"max_new_tokens": 1},
        {"stop": ["x", "y"]},
    ],
)
def test_sane_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "row",
    [
        torch.tensor([0.0, float("nan"), 1.0]),
        torch.tensor([float("inf"), 0.0, 1.0]),
        torch.full((3,), float("-inf")),
    ],
)
def test_sampler_reports_a_non_finite_row_instead_of_raising(row):
    params = SamplingParams(do_sample=True, temperature=0.8, seed=3)
    assert sample_row(row, params, torch.Generator().manual_seed(3)) is None
