"""The adapter loader's NaN/inf check: a first sum decides for ordinary weights; finite weights
whose sum overflows are still accepted (the element-wise check decides), NaN and inf refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraserve.model.peft_adapter import AdapterFormatError, _finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_weights_pass_even_when_their_sum_overflows(dtype):
    _finite(Path("a"), "w", torch.randn(64, 32).to(dtype))
    huge = torch.full((8, 8), torch.finfo(dtype).max, dtype=dtype)  # finite; the fp32 sum is inf
    _finite(Path("a"), "w", huge)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_are_refused(dtype, bad):
    weights = torch.randn(64, 32).to(dtype)
    weights[5, 7] = bad
    with pytest.raises(AdapterFormatError, match="non-finite"):
        _finite(Path("a"), "w", weights)
