"""``djl_python.encode_decode`` is ``loraserve.djl.encode_decode``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.encode_decode")
