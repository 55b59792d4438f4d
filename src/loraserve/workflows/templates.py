"""Workflow templates: a workflow document whose ``$param`` strings are replaced in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loraserve.adapters.sources import ensure_inside, local_path_of
from loraserve.workflows.spec import WorkflowError, read_document_text

PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")

# DJL's ready template for "one model + one adapter".
ADAPTER_TEMPLATE = json.dumps(
    {
        "name": "$adapter",
        "version": "0.1",
        "models": {"m": "$model"},
        "configs": {"adapters": {"$adapter": {"model": "m", "src": "$url"}}},
        "workflow": {"out": ["adapter", "$adapter", "in"]},
    }
)
BUILTIN_TEMPLATES = {"adapter": ADAPTER_TEMPLATE}


def template_text(template: str, base_dir: Path | None, roots: list[Path] | None = None) -> str:
    """A built-in template's text, or a template file (path or ``file://``) inside ``roots``
    (when given: templates named over the API)."""
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    path = local_path_of(template, base_dir)
    if roots is not None:
        ensure_inside(path, roots, kind="model")
    if not path.is_file():
        raise WorkflowError(
            f"template {template} is neither built in ({', '.join(BUILTIN_TEMPLATES)}) nor a file"
        )
    return read_document_text(path)


def instantiate(text: str, params: dict[str, str]) -> str:
    """Replace ``$name`` with JSON-escaped parameter values; every placeholder must be given."""
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in params})
    if missing:
        raise WorkflowError(f"template parameter(s) missing: {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: json.dumps(params[m.group(1)])[1:-1], text)
