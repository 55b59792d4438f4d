"""Workflow templates: a workflow document whose ``$param`` strings are replaced in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loraserve.workflows.spec import WorkflowError

PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")

# DJL's ready template for "one model + one adapter".
ADAPTER_TEMPLATE = json.dumps({
    "name": "$adapter",
    "version": "0.1",
    "models": {"m": "$model"},
    "configs": {"adapters": {"$adapter": {"model": "m", "src": "$url"}}},
    "workflow": {"out": ["adapter", "$adapter", "in"]},
})
BUILTIN_TEMPLATES = {"adapter": ADAPTER_TEMPLATE}


def template_text(template: str, base_dir: Path | None) -> str:
    """A built-in template's text, or a template file (path or ``file://``)."""
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    path = Path(template.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise WorkflowError(f"template {template} is neither built in "
                            f"({', '.join(BUILTIN_TEMPLATES)}) nor a file")
    return path.read_text(encoding="utf-8")


def instantiate(text: str, params: dict[str, str]) -> str:
    """Replace ``$name`` with JSON-escaped parameter values; every placeholder must be given."""
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in params})
    if missing:
        raise WorkflowError(f"template parameter(s) missing: {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: json.dumps(params[m.group(1)])[1:-1], text)
