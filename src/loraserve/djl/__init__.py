"""loraserve's implementation of DJL Serving's ``djl_python`` handler API.

Users import it as ``djl_python`` (the top-level package of that name in this distribution
aliases these modules, and steps aside when DJL's own ``djl_python`` is installed); loraserve's
own code imports it from here so that it never depends on which one a user has.
"""

from loraserve.djl.inputs import Input
from loraserve.djl.outputs import Output
from loraserve.djl.pair_list import PairList
from loraserve.djl.session_manager import Session, SessionManager

__all__ = ["Input", "Output", "PairList", "Session", "SessionManager"]
__version__ = "0.36.0"  # the DJL release whose handler API this follows
