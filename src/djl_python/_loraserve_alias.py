"""Marks this ``djl_python`` as loraserve's alias package (see ``__init__``)."""
