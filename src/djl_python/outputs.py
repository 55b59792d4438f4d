"""``djl_python.outputs`` is ``loraserve.djl.outputs``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.outputs")
