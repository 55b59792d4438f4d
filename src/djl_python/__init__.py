"""``djl_python`` for DJL Serving handlers run by loraserve, unless DJL's own is installed.

DJL users write ``from djl_python import Input, Output`` in their ``model.py`` and in their
unit tests. This package makes that work wherever loraserve is installed (in workers and in a
user's own ``pytest`` run) without shadowing DJL's real package: when another ``djl_python``
package is found on ``sys.path``, it is loaded in this one's place, so DJL's wins whatever
the path order. Otherwise every ``djl_python.X`` module here is an alias of ``loraserve.djl.X``
(the same module object, so ``mock.patch("djl_python.encode_decode.decode_csv")`` reaches the
code that runs).
"""

import importlib.machinery
import importlib.util
import os
import sys

_MARKER = "_loraserve_alias.py"  # in this folder: a loraserve copy, never DJL's own


def _real_djl_python():
    """The spec of a ``djl_python`` package on ``sys.path`` that is not a loraserve copy."""
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec(__name__, [entry or os.curdir])
        locations = list(getattr(spec, "submodule_search_locations", None) or [])
        if (
            spec
            and spec.loader
            and locations
            and not any(os.path.isfile(os.path.join(loc, _MARKER)) for loc in locations)
        ):
            return spec
    return None


_real = None if os.environ.get("LORASERVE_DJL_PYTHON") == "loraserve" else _real_djl_python()
if _real is not None:
    _module = importlib.util.module_from_spec(_real)
    sys.modules[__name__] = _module  # the import statement returns this module, not us
    _real.loader.exec_module(_module)
else:
    from loraserve.djl import Input, Output, PairList, Session, SessionManager, __version__

    __all__ = ["Input", "Output", "PairList", "Session", "SessionManager", "__version__"]
