"""The DJL ``Input``/``Output`` types loraserve's own code uses (its ``djl_python`` implementation,
``loraserve.djl``), imported from here so callers do not care where they live."""

from loraserve.djl.inputs import BATCH_PREFIX, Input
from loraserve.djl.outputs import Output, encode_json
from loraserve.djl.pair_list import PairList

__all__ = ["BATCH_PREFIX", "Input", "Output", "PairList", "encode_json"]
