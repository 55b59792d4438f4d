"""``djl_python.adapter_manager_mixin`` is ``loraserve.djl.adapter_manager_mixin``:
one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.adapter_manager_mixin")
