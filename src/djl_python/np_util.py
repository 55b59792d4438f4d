"""``djl_python.np_util`` is ``loraserve.djl.np_util``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.np_util")
