"""``djl_python.service_loader`` is ``loraserve.djl.service_loader``: one module object (see __init__)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraserve.djl.service_loader")
