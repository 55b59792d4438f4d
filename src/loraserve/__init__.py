"""loraserve: a model server where LoRA adapters are first-class."""

__version__ = "0.1.0"
