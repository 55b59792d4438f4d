"""Resolve an adapter or model ``src`` to a local directory, safely.

Accepted: a local path (absolute, or relative to a base directory), a ``file://`` URL, and
``.tar.gz`` / ``.tgz`` / ``.zip`` archives, which are unpacked into a scratch directory after
every member is checked (no absolute paths, no ``..``, no links pointing outside).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from loraserve.errors import BadRequestError, ConflictError, ForbiddenError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


def local_path_of(src: str, base_dir: Path | None) -> Path:
    """Turn a path or ``file://`` URL into an absolute, symlink-resolved path."""
    if not src or not src.strip():
        raise BadRequestError("src is required: a local directory, file:// URL or archive")
    parsed = urlparse(src)
    if parsed.scheme == "file":
        raw = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise BadRequestError(
            f"src scheme {parsed.scheme}:// is not supported; use a local path or file:// URL"
        )
    else:
        raw = src
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path.resolve()


def ensure_inside(path: Path, roots: list[Path]) -> None:
    """Refuse a path outside every allowed root (after symlinks are resolved)."""
    if roots and not any(path == root or path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ForbiddenError(
            f"src {path} is outside the allowed adapter roots ({allowed}); "
            "start the server with --allowed-adapter-roots to allow it"
        )


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def resolve_source(src: str, base_dir: Path | None, roots: list[Path], scratch: Path) -> Path:
    """Return the directory (or file) the handler should load for ``src``."""
    path = local_path_of(src, base_dir)
    ensure_inside(path, roots)
    if not path.exists():
        raise BadRequestError(f"src {src} does not exist (resolved to {path})")
    if path.is_file() and is_archive(path):
        return extract_archive(path, scratch)
    return path


def server_reads(src: str, builtin_engine: bool) -> bool:
    """Whether the server itself opens ``src``: archives it unpacks, and the weights of the
    built-in engine. Only those are resolved and kept inside the allowed roots."""
    return builtin_engine or urlparse(src).path.lower().endswith(ARCHIVE_SUFFIXES)


def handler_src(src: str) -> str:
    """``src`` for a custom handler's ``register_adapter``, exactly as the caller wrote it (a
    path, a name the handler resolves, ...), as DJL passes it. Like DJL, a URL scheme other
    than ``file`` is refused with 409 ("URL adapters are not currently supported")."""
    if not src or not src.strip():
        raise BadRequestError("src is required: a local directory, file:// URL or archive")
    scheme = urlparse(src).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # one letter would be a Windows drive
        raise ConflictError(f"URL adapters are not currently supported (src {src})")
    return src


def _check_member_name(name: str, archive: Path) -> None:
    pure = Path(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or ".." in pure.parts:
        raise BadRequestError(f"archive {archive.name} has an unsafe entry {name!r}")


def _check_tar(tar: tarfile.TarFile, archive: Path, target: Path) -> None:
    for member in tar.getmembers():
        _check_member_name(member.name, archive)
        if member.issym() or member.islnk():
            link_target = (target / Path(member.name).parent / member.linkname).resolve()
            if member.islnk():
                link_target = (target / member.linkname).resolve()
            if not link_target.is_relative_to(target):
                raise BadRequestError(
                    f"archive {archive.name} has a link {member.name!r} pointing outside it"
                )
        elif not (member.isfile() or member.isdir()):
            raise BadRequestError(f"archive {archive.name} has a special file {member.name!r}")


def extract_archive(archive: Path, scratch: Path) -> Path:
    """Unpack into ``scratch/<name>-<digest>`` once; the same archive content reuses it."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    stem = archive.name.split(".")[0] or "archive"
    target = scratch / f"{stem}-{digest}"
    if target.is_dir():
        return _single_root(target)
    scratch.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=scratch, prefix=".extract-")).resolve()
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_member_name(name, archive)
                zf.extractall(staging)
        else:
            with tarfile.open(archive, "r:*") as tar:
                _check_tar(tar, archive, staging)
                tar.extractall(staging, filter="data")
        os.replace(staging, target)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise BadRequestError(f"cannot unpack archive {archive.name}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _single_root(target)


def _single_root(directory: Path) -> Path:
    """An archive holding one top-level folder stands for that folder."""
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return directory
