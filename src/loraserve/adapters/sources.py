"""Resolve an adapter or model ``src`` to a local directory, safely.

Accepted: a local path (absolute, or relative to a base directory) or a ``file://`` URL,
inside the allowed roots once symlinks are resolved; ``.tar.gz`` / ``.tgz`` / ``.zip``
archives are unpacked, bounded and checked, by ``adapters.archives``; an ``http(s)://`` archive
(``adapters.remote``) or an ``s3://`` folder or archive (``adapters.s3``) under an allowed URL
prefix is fetched first.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from loraserve.adapters.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive, limits
from loraserve.adapters.manifest import fetch_manifest, is_manifest
from loraserve.adapters.remote import fetched_archive, is_remote
from loraserve.adapters.s3 import fetch_s3, is_s3
from loraserve.config import RemoteAccess
from loraserve.errors import BadRequestError, ConflictError, ForbiddenError

__all__ = [
    "RemoteAccess",
    "ensure_inside",
    "exists",
    "extract_archive",
    "handler_src",
    "is_archive",
    "local_path_of",
    "resolve_source",
    "server_reads",
]


def local_path_of(src: str, base_dir: Path | None) -> Path:
    """Turn a path or ``file://`` URL into an absolute, symlink-resolved path."""
    if not src or not src.strip():
        raise BadRequestError("src is required: a local directory, file:// URL or archive")
    if len(src) > 4096:
        raise BadRequestError("src is longer than 4096 characters")
    parsed = urlparse(src)
    if parsed.scheme == "file":
        raw = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise BadRequestError(
            f"src scheme {parsed.scheme}:// is not supported; use a local path or file:// URL"
        )
    else:
        raw = src
    if "\x00" in raw:
        raise BadRequestError("src is not a usable path: it holds a NUL character")
    path = Path(raw).expanduser()
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in path.parts):
        raise BadRequestError("src has a path segment longer than 255 bytes")
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        raise BadRequestError(f"src {src} cannot be resolved to a path") from None


def exists(path: Path) -> bool:
    """``path.exists()``, with a name the OS refuses (too long, …) counted as missing."""
    try:
        return path.exists()
    except OSError:
        return False


def ensure_inside(path: Path, roots: list[Path], kind: str = "adapter") -> None:
    """Refuse a path outside every allowed root (after symlinks are resolved); with no root
    at all, refuse everything."""
    if not any(path == root or path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none configured"
        raise ForbiddenError(
            f"{kind} source {path} is outside the allowed {kind} roots ({allowed}); "
            f"start the server with --allowed-{kind}-roots to allow it"
        )


def resolve_source(
    src: str, base_dir: Path | None, roots: list[Path], scratch: Path, remote: RemoteAccess | None = None
) -> Path:
    """Return the directory (or file) the handler should load for ``src``. A remote one under
    an allowed prefix of ``remote`` is fetched first: an http(s) archive into the downloads
    next to ``scratch``, an s3 folder into ``scratch`` itself."""
    remote = remote or RemoteAccess()
    if is_remote(src) and is_manifest(src):
        return fetch_manifest(src, remote.allowed_urls, scratch, limits())
    if is_remote(src):
        downloads = scratch.parent.parent / "downloads"
        with fetched_archive(src, remote.allowed_urls, downloads, limits().max_bytes) as archive:
            return extract_archive(archive, scratch)
    if is_s3(src):
        fetched = fetch_s3(src, remote.allowed_urls, scratch, limits(), remote.s3_endpoint_url)
        if fetched.is_dir():
            return fetched
        try:
            return extract_archive(fetched, scratch)
        finally:
            fetched.unlink(missing_ok=True)
    path = local_path_of(src, base_dir)
    ensure_inside(path, roots)
    if not exists(path):
        raise BadRequestError(f"src {src} does not exist (resolved to {path})")
    if path.is_file() and is_archive(path):
        return extract_archive(path, scratch)
    return path


def server_reads(src: str, builtin_engine: bool) -> bool:
    """Whether the server itself opens ``src``: archives it unpacks, s3 sources it fetches,
    and the weights of the built-in engine. Only those are resolved and kept inside the allowed roots."""
    return builtin_engine or is_s3(src) or urlparse(src).path.lower().endswith(ARCHIVE_SUFFIXES)


def handler_src(src: str) -> str:
    """``src`` for a custom handler's ``register_adapter``, exactly as the caller wrote it (a
    path, a name the handler resolves, ...), as DJL passes it. Like DJL, a URL scheme other
    than ``file`` is refused with 409 ("URL adapters are not currently supported")."""
    if not src or not src.strip():
        raise BadRequestError("src is required: a local directory, file:// URL or archive")
    if len(src) > 4096:
        raise BadRequestError("src is longer than 4096 characters")
    if "\x00" in src:
        raise BadRequestError("src is not a usable path: it holds a NUL character")
    scheme = urlparse(src).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # one letter would be a Windows drive
        raise ConflictError(f"URL adapters are not currently supported (src {src})")
    return src
