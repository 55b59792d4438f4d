"""``djl_python.custom_formatter_handling`` is ``loraserve.djl.custom_formatter_handling``:
one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.custom_formatter_handling")
