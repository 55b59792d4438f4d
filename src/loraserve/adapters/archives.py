"""Unpack ``.tar.gz`` / ``.tgz`` / ``.zip`` adapter and model archives, bounded and checked,
and remove the unpacked copies once nothing uses them.

Before anything is written every member is checked: no absolute paths, no ``..``, no links
pointing outside, no special files, no encrypted zip members, at most ``max_entries`` members
and ``max_bytes`` of content in all (the declared sizes bind: tar reads exactly a member's
size, zip stops at it and checks the CRC). A bomb is refused while its headers are read, not
after it filled the disk. A corrupt archive is a 400 naming the archive, never a 500.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loraserve.errors import BadRequestError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
# What a damaged archive raises from the tar, gzip, zlib and zip modules.
CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_bytes: int = 4 * 1024**3
    max_entries: int = 10_000


# Process-wide, set once at start-up from ServerConfig (``configure``): archives are unpacked
# in the front process only, by callers that do not carry the server configuration.
_limits = ArchiveLimits()


def configure(limits: ArchiveLimits) -> None:
    global _limits
    _limits = limits


def limits() -> ArchiveLimits:
    return _limits


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _Budget:
    """Running totals of members and bytes, refused as soon as either passes its limit."""

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive, self.limits = archive.name, limits
        self.entries = self.size = 0

    def add(self, name: str, size: int) -> None:
        pure = Path(name)
        if pure.is_absolute() or name.startswith(("/", "\\")) or ".." in pure.parts:
            raise BadRequestError(f"archive {self.archive} has an unsafe entry {name!r}")
        self.entries += 1
        self.size += max(size, 0)
        if self.entries > self.limits.max_entries:
            raise BadRequestError(
                f"archive {self.archive} has more than {self.limits.max_entries} "
                "entries (max_archive_entries)"
            )
        if self.size > self.limits.max_bytes:
            raise BadRequestError(
                f"archive {self.archive} unpacks to more than {self.limits.max_bytes} "
                "bytes (max_archive_bytes)"
            )


def _check_tar(tar: tarfile.TarFile, budget: _Budget, target: Path) -> None:
    for member in tar:  # streamed: a bomb stops at the member that passes the budget
        budget.add(member.name, member.size)
        if member.issym() or member.islnk():
            base = target if member.islnk() else target / Path(member.name).parent
            if not (base / member.linkname).resolve().is_relative_to(target):
                raise BadRequestError(
                    f"archive {budget.archive} has a link {member.name!r} pointing outside it"
                )
        elif not (member.isfile() or member.isdir()):
            raise BadRequestError(f"archive {budget.archive} has a special file {member.name!r}")


def _check_zip(zf: zipfile.ZipFile, budget: _Budget) -> None:
    for info in zf.infolist():
        budget.add(info.filename, info.file_size)
        if info.flag_bits & 0x1:
            raise BadRequestError(f"archive {budget.archive} is encrypted; loraserve cannot open it")


def _unpack(archive: Path, staging: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(archive, limits)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            _check_zip(zf, budget)
            zf.extractall(staging)
        return
    with tarfile.open(archive, "r:*") as tar:
        _check_tar(tar, budget, staging)
        tar.extractall(staging, filter="data")


def extract_archive(archive: Path, scratch: Path, limits: ArchiveLimits | None = None) -> Path:
    """Unpack into ``scratch/<name>-<digest>`` once; the same archive content reuses it."""
    hasher = hashlib.sha256()
    try:
        with archive.open("rb") as handle:
            while block := handle.read(1 << 20):
                hasher.update(block)
    except OSError as exc:
        raise BadRequestError(f"cannot read archive {archive.name}: {exc.strerror}") from None
    stem = archive.name.split(".")[0] or "archive"
    target = scratch / f"{stem}-{hasher.hexdigest()[:16]}"
    if target.is_dir():
        return _single_root(target)
    scratch.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=scratch, prefix=".extract-")).resolve()
    try:
        _unpack(archive, staging, limits or _limits)
        os.replace(staging, target)
    except BadRequestError:
        raise
    except CORRUPT as exc:
        raise BadRequestError(
            f"cannot unpack archive {archive.name}: it is damaged or not a "
            f"supported archive ({type(exc).__name__})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _single_root(target)


def _single_root(directory: Path) -> Path:
    """An archive holding one top-level folder stands for that folder."""
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return directory


def prune_extractions(scratch: Path, in_use: Iterable[str | Path]) -> list[Path]:
    """Remove the unpacked copies under ``scratch`` that no path in ``in_use`` lies in (an
    in-progress ``.extract-*`` staging folder is left to its own clean-up). Returns them."""
    if not scratch.is_dir():
        return []
    used = [Path(p).resolve() for p in in_use]
    removed = []
    for child in scratch.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        resolved = child.resolve()
        if not any(p == resolved or p.is_relative_to(resolved) for p in used):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
