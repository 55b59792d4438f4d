"""``djl_python.test_model`` is ``loraserve.djl.test_model``; ``python -m`` runs its CLI."""

import importlib
import sys

if __name__ == "__main__":
    importlib.import_module("loraserve.djl.test_model").run()
else:
    sys.modules[__name__] = importlib.import_module("loraserve.djl.test_model")
