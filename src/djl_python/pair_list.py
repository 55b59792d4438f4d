"""``djl_python.pair_list`` is ``loraserve.djl.pair_list``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.pair_list")
