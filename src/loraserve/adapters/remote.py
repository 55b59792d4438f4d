"""Adapter archives from where they are stored: an ``http(s)://`` URL of a ``.tar.gz`` /
``.tgz`` / ``.zip`` archive, fetched into a content-addressed cache, then unpacked like a local
archive (``adapters.archives``).

Only URLs under a prefix of ``--allowed-adapter-urls`` are fetched (none by default), and so is
every redirect (at most ``MAX_REDIRECTS``); a URL with credentials in it is refused (pass them
another way), and a query string — a presigned URL's signature — never appears in a message.
The download is bounded in bytes (``max_archive_bytes``) and time, retried with backoff on
connection errors and 5xx answers, checked against ``#sha256=<hex>`` when the URL carries one
(pip's form), and placed atomically under its own sha256 in the cache folder it is given: a
half-downloaded archive is never visible. A failed fetch is a 502 (the store failed) or a 4xx
(the request was wrong) naming the source, and nothing is registered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from loraserve.adapters.archives import ARCHIVE_SUFFIXES
from loraserve.errors import BadRequestError, ForbiddenError, LoraserveError

MAX_REDIRECTS = 3
TIMEOUT_S = 60.0
RETRIES = 2  # after the first try: 3 tries in all, 0.5 s then 1 s apart
_SHA256 = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


class BadGatewayError(LoraserveError):
    status_code = 502
    error_type = "BadGatewayException"


def is_remote(src: str) -> bool:
    return urlsplit(src).scheme in ("http", "https")


def shown(url: str) -> str:
    """``url`` as messages and descriptions show it: no credentials, no query, no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")


def fetch_archive(url: str, allowed: list[str], cache: Path, max_bytes: int) -> Path:
    """The archive at ``url``, downloaded (or found) in ``cache``; raises a LoraserveError."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise BadRequestError(f"src {shown(url)}: credentials in the URL are refused (they would be kept)")
    if not parts.path.lower().endswith(ARCHIVE_SUFFIXES):
        raise BadRequestError(
            f"src {shown(url)}: an http(s) source must be an archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    check_allowed(url, allowed)
    expected = _expected_sha256(url, parts.fragment)
    suffix = next(s for s in ARCHIVE_SUFFIXES if parts.path.lower().endswith(s))
    if expected and (cache / f"{expected}{suffix}").is_file():
        return cache / f"{expected}{suffix}"  # fetched before, verified then
    return fetch_file(url.split("#", 1)[0], allowed, cache, max_bytes, expected, suffix)


def fetch_file(url: str, allowed: list[str], cache: Path, max_bytes: int, expected: str, suffix: str) -> Path:
    """``url`` downloaded into ``cache`` as ``<sha256><suffix>``: bounded, checked against
    ``expected`` (a sha256, or ""), retried with backoff on connection errors and 5xx."""
    cache.mkdir(parents=True, exist_ok=True)
    for attempt in range(RETRIES + 1):
        try:
            return _download(url, allowed, cache, suffix, max_bytes, expected)
        except _Retryable as exc:
            if attempt == RETRIES:
                raise BadGatewayError(
                    f"fetching {shown(url)} failed after {RETRIES + 1} tries: {exc}"
                ) from None
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def fetched_archive(url: str, allowed: list[str], downloads: Path, max_bytes: int) -> Iterator[Path]:
    """The archive at ``url`` while the block runs. One whose checksum the URL names is kept in
    ``downloads`` under its hash, so a restart or update skips the fetch; any other is deleted
    after (nothing says a later fetch would get the same bytes)."""
    if urlsplit(url).fragment:  # a checksum (``fetch_archive`` refuses any other fragment)
        yield fetch_archive(url, allowed, downloads, max_bytes)
        return
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=downloads) as once:
        yield fetch_archive(url, allowed, Path(once), max_bytes)


def prune_downloads(downloads: Path, srcs: list[str]) -> list[Path]:
    """Remove kept archives no ``src`` names by its ``#sha256=`` any more (in-progress
    ``.fetch-*`` files are left to their own clean-up). Returns what was removed."""
    if not downloads.is_dir():
        return []
    wanted = {m.group(1).lower() for s in srcs if (m := _SHA256.match(urlsplit(s).fragment))}
    removed = []
    for kept in downloads.iterdir():
        if kept.is_file() and not kept.name.startswith(".") and kept.name.split(".", 1)[0] not in wanted:
            kept.unlink(missing_ok=True)
            removed.append(kept)
    return removed


class _Retryable(Exception):
    """A connection error or a 5xx answer: worth another try."""


def _download(url: str, allowed: list[str], cache: Path, suffix: str, max_bytes: int, expected: str) -> Path:
    def check_hop(request: httpx.Request) -> None:  # every redirect target too
        check_allowed(str(request.url), allowed)

    fd, name = tempfile.mkstemp(prefix=".fetch-", dir=cache)
    partial = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        with (
            os.fdopen(fd, "wb") as out,
            httpx.Client(
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                timeout=TIMEOUT_S,
                event_hooks={"request": [check_hop]},
            ) as client,
            client.stream("GET", url) as reply,
        ):
            if reply.status_code >= 500:
                raise _Retryable(f"the store answered {reply.status_code}")
            if reply.status_code != 200:
                raise BadGatewayError(f"fetching {shown(url)}: the store answered {reply.status_code}")
            for chunk in reply.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BadRequestError(
                        f"src {shown(url)} is larger than {max_bytes} bytes (max_archive_bytes)"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if expected and got != expected:
            raise BadRequestError(f"src {shown(url)}: sha256 is {got}, not the {expected} the URL names")
        placed = cache / f"{got}{suffix}"
        os.replace(partial, placed)  # atomic: the name appears with the whole content
        return placed
    except httpx.TooManyRedirects:
        raise BadGatewayError(f"fetching {shown(url)}: more than {MAX_REDIRECTS} redirects") from None
    except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
        raise _Retryable(type(exc).__name__) from None
    finally:
        partial.unlink(missing_ok=True)


def check_allowed(url: str, allowed: list[str]) -> None:
    """Refuse a URL (http(s) or s3) under no allowed prefix. A prefix ends where a path
    segment does: ``https://store`` allows ``https://store/a.zip``, not ``https://store.evil``."""
    plain = url.split("#", 1)[0]
    if not any(_under(plain, prefix) for prefix in allowed):
        raise ForbiddenError(
            f"adapter source {shown(url)} is not under an allowed URL prefix "
            f"({', '.join(allowed) or 'none configured'}); start the server with --allowed-adapter-urls"
        )


def _under(url: str, prefix: str) -> bool:
    if not prefix or not url.startswith(prefix):
        return False
    return prefix.endswith("/") or len(url) == len(prefix) or url[len(prefix)] in "/?"


def _expected_sha256(url: str, fragment: str) -> str:
    if not fragment:
        return ""
    match = _SHA256.match(fragment)
    if match is None:
        raise BadRequestError(f"src {shown(url)}: the fragment must be #sha256=<64 hex digits>")
    return match.group(1).lower()
