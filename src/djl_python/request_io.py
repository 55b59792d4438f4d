"""``djl_python.request_io`` is ``loraserve.djl.request_io``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.request_io")
