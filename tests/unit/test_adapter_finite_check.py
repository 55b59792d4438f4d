"""The adapter loader's NaN/inf check (one largest magnitude per tensor, times its scale, in the
serving dtype): finite weights whose sum would overflow are accepted, NaN and inf refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraserve.model.peft_adapter import AdapterFormatError, _all_finite, _finite


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


def _factors(dtype: torch.dtype) -> list[tuple[str, torch.Tensor, float]]:
    return [(f"layer {i} q_proj lora_{w}", torch.randn(8, 16).to(dtype), 2.0) for i in range(3) for w in "AB"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_factors_checked_at_once_name_the_first_bad_one(dtype):
    """The loader checks every factor with one reduction (max |w| per tensor, times its scale,
    in the serving dtype): the same verdict as checking each scaled tensor element-wise."""
    _all_finite(Path("a"), _factors(dtype), dtype)
    for bad in (float("nan"), float("inf")):
        factors = _factors(dtype)
        factors[3][1][2, 5] = bad
        with pytest.raises(AdapterFormatError, match="layer 1 q_proj lora_B holds non-finite"):
            _all_finite(Path("a"), factors, dtype)
    top = torch.finfo(dtype).max
    fits = [("lora_B at the top", torch.full((2, 2), top).to(dtype), 1.0)]
    _all_finite(Path("a"), fits, dtype)  # finite, and so is every product
    overflows = [("lora_B (scaled)", torch.full((2, 2), top).to(dtype), 2.0)]
    with pytest.raises(AdapterFormatError, match=r"lora_B \(scaled\) holds non-finite"):
        _all_finite(Path("a"), overflows, dtype)
    negative = [("lora_B negative scale", torch.full((2, 2), -top).to(dtype), -2.0)]
    with pytest.raises(AdapterFormatError, match="negative scale holds non-finite"):
        _all_finite(Path("a"), negative, dtype)
