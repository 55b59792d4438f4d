"""``djl_python.session_manager`` is ``loraserve.djl.session_manager``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.session_manager")
