"""Names of models and workflows: one safe charset, because a name becomes a URL segment, a
metric label, a directory under the state dir and text in the console."""

from __future__ import annotations

import re

from loraserve.errors import BadRequestError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(kind: str, name: object) -> str:
    """``name`` if it is 1-128 of ``[A-Za-z0-9._-]`` starting with a letter or digit (so no
    ``/``, no ``..`` prefix, no control characters); a 400 naming ``kind`` otherwise."""
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{kind} name is required")
    if not NAME_PATTERN.match(name):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise BadRequestError(
            f"invalid {kind} name {shown!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_model_name(name: object) -> str:
    return validate_name("model", name)


def validate_workflow_name(name: object) -> str:
    return validate_name("workflow", name)
