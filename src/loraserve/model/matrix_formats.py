"""How the native layer stack (``csrc/decode_loop.cpp``) reads each base matrix of a step: the
codes its ``matmul`` dispatches on, and what each holds. The decoder's LinearOps say, per step's
row count, which kernel each matrix goes through (``native_matrices``), so the stack reads every
matrix exactly as the Python loop would, quantized bases included."""

from __future__ import annotations

from enum import IntEnum
from typing import TypeAlias

import torch


class MatrixFormat(IntEnum):
    """The tensors each format passes, in this order."""

    PACKED = 0  # pack_for_gemm(w): the native packed GEMM, the bias fused
    Q4_1 = 1  # torch's int4 pack, scales_and_zeros: torch's own int4 kernel
    Q8_0 = 2  # q int8 (N, K), d fp32 (N, K/32): gemv_q8_0
    INT8 = 3  # q int8 (N, K), scales fp32 (N,): gemv_int8
    W8A8 = 4  # pack_vnni(q), row sums int32, scales fp32: the native W8A8 GEMM


NativeMatrix: TypeAlias = tuple[MatrixFormat, list[torch.Tensor]]
