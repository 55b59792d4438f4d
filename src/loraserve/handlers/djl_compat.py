"""Make ``from djl_python import Input, Output`` work in worker processes, unless the real
``djl_python`` package is installed, which then wins (we never shadow it)."""

from __future__ import annotations

import importlib.util
import sys
import types

from loraserve.handlers import io as lsio


def install_djl_python_alias() -> bool:
    """Register ``djl_python`` (and its ``inputs``/``outputs``/``pair_list`` modules) as aliases
    of loraserve's implementation. Returns False when a real ``djl_python`` exists."""
    if "djl_python" in sys.modules or importlib.util.find_spec("djl_python") is not None:
        return False
    package = types.ModuleType("djl_python")
    package.__path__ = []  # a package, so ``import djl_python.inputs`` resolves submodules
    package.Input = lsio.Input  # type: ignore[attr-defined]
    package.Output = lsio.Output  # type: ignore[attr-defined]
    package.PairList = lsio.PairList  # type: ignore[attr-defined]
    sys.modules["djl_python"] = package
    for name, attrs in {
        "inputs": {"Input": lsio.Input},
        "outputs": {"Output": lsio.Output},
        "pair_list": {"PairList": lsio.PairList},
    }.items():
        module = types.ModuleType(f"djl_python.{name}")
        for attr, value in attrs.items():
            setattr(module, attr, value)
        setattr(package, name, module)
        sys.modules[f"djl_python.{name}"] = module
    return True
