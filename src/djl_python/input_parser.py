"""``djl_python.input_parser`` is ``loraserve.djl.input_parser``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.input_parser")
