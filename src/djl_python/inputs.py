"""``djl_python.inputs`` is ``loraserve.djl.inputs``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.inputs")
