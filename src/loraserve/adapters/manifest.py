"""An adapter published over http(s) as separate files, for stores that serve files but no
archives: ``https://store/adapters/qv/manifest.json`` lists them, each with its sha256::

    {"files": [{"path": "adapter_config.json", "sha256": "…"},
               {"path": "adapter_model.safetensors", "sha256": "…"}]}

Each file is fetched from its path relative to the manifest's URL (under the allowed prefixes,
like every fetch: ``adapters.remote``), verified, and the folder is placed by one rename, named
by the manifest's own hash: the same manifest is the same content, never fetched twice, and a new
version is a new manifest. Paths are checked like archive members; the files' count and total
bytes are bounded like an archive's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

from loraserve.adapters.archives import ArchiveLimits
from loraserve.adapters.remote import fetch_file, shown
from loraserve.errors import BadRequestError

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def is_manifest(url: str) -> bool:
    return urlsplit(url).path.endswith("/" + MANIFEST_NAME)


def fetch_manifest(url: str, allowed: list[str], scratch: Path, limits: ArchiveLimits) -> Path:
    """The adapter folder ``url``'s manifest lists, fetched and verified under ``scratch``."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=scratch) as staging_name:
        staging = Path(staging_name)
        manifest = fetch_file(url, allowed, staging / ".fetch", MAX_MANIFEST_BYTES, "", ".json")
        data = manifest.read_bytes()
        target = scratch / f"manifest-{hashlib.sha256(data).hexdigest()[:24]}"
        if target.is_dir():
            return target
        folder = staging / "adapter"
        folder.mkdir()
        budget = limits.max_bytes
        for path, sha in _entries(url, data, limits):
            fetched = fetch_file(urljoin(url, path), allowed, staging / ".fetch", budget, sha, "")
            budget -= fetched.stat().st_size
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, folder / path)
        shutil.rmtree(staging / ".fetch", ignore_errors=True)
        try:
            os.replace(folder, target)
        except OSError:  # a concurrent fetch of the same manifest placed it first
            if not target.is_dir():
                raise
    return target


def _entries(url: str, data: bytes, limits: ArchiveLimits) -> list[tuple[str, str]]:
    try:
        files = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError):
        raise BadRequestError(
            f"src {shown(url)}: not a manifest (a JSON object with a 'files' list)"
        ) from None
    if not isinstance(files, list) or not files or len(files) > limits.max_entries:
        raise BadRequestError(f"src {shown(url)}: 'files' must list 1 to {limits.max_entries} files")
    entries = []
    for item in files:
        path = item.get("path") if isinstance(item, dict) else None
        sha = item.get("sha256") if isinstance(item, dict) else None
        pure = PurePosixPath(path) if isinstance(path, str) else None
        if pure is None or pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in str(path):
            raise BadRequestError(f"src {shown(url)}: the manifest lists an unsafe path {path!r}")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise BadRequestError(f"src {shown(url)}: the manifest must give each file's sha256 ({path})")
        entries.append((str(pure), sha.lower()))
    return entries
