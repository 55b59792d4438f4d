"""Adapters stored in S3 or an S3-compatible store: ``s3://bucket/prefix`` (a folder of
adapter files) or ``s3://bucket/key.tar.gz`` (an archive, unpacked like a local one).

boto3 finds the region and credentials the standard AWS way (environment, shared config,
instance or task role); the endpoint is ``--s3-endpoint-url`` where given, else boto3's own
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` included). Only sources under a prefix of
``--allowed-adapter-urls`` are read, as for http(s). A folder is copied into a directory named
by the hash of its listing (keys, sizes, ETags) — unchanged objects are never fetched twice, a
changed one gives a new directory — and placed by one rename once every object is there: a
half-downloaded adapter is never visible. Object count and bytes are bounded like archives;
boto3 retries with backoff (standard mode); messages name the bucket and key, never
credentials.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from loraserve.adapters.archives import ARCHIVE_SUFFIXES, ArchiveLimits
from loraserve.adapters.remote import BadGatewayError, check_allowed
from loraserve.errors import BadRequestError

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str  # relative to the prefix
    size: int
    etag: str


def is_s3(src: str) -> bool:
    return urlsplit(src).scheme == "s3"


def split_url(src: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URL, refusing what S3 would not hold."""
    parts = urlsplit(src)
    key = parts.path.lstrip("/")
    if not parts.netloc or parts.username or parts.password or parts.query or parts.fragment:
        raise BadRequestError(f"src {src}: expected s3://bucket/prefix (no credentials, query or fragment)")
    if not key:
        raise BadRequestError(f"src {src}: name the adapter's prefix or archive inside bucket {parts.netloc}")
    return parts.netloc, key


def fetch_s3(
    src: str, allowed: list[str], scratch: Path, limits: ArchiveLimits, endpoint_url: str | None
) -> Path:
    """A local copy of ``src``: the adapter folder under ``scratch``, or (for an archive key)
    the downloaded archive in a temporary file the caller unpacks and then deletes."""
    bucket, key = split_url(src)
    check_allowed(src, allowed)
    client = _client(endpoint_url)
    if key.lower().endswith(ARCHIVE_SUFFIXES):
        return _download_archive(client, src, bucket, key, scratch, limits)
    objects = _list(client, src, bucket, key.rstrip("/") + "/", limits)
    target = scratch / f"s3-{_listing_digest(bucket, key, objects)}"
    if target.is_dir():
        return target
    scratch.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=scratch, prefix=".extract-"))
    try:
        for obj in objects:
            dest = staging / obj.key
            dest.parent.mkdir(parents=True, exist_ok=True)
            _get(client, src, bucket, key.rstrip("/") + "/" + obj.key, dest, obj.size)
        try:
            os.replace(staging, target)
        except OSError:  # a concurrent fetch of the same listing placed it first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def prefix_exists(src: str, endpoint_url: str | None) -> bool:
    """Whether any object lies under ``src``'s prefix (a resolver's probe: one listing call)."""
    bucket, key = split_url(src)
    try:
        with _store_errors(src):
            reply = _client(endpoint_url).list_objects_v2(
                Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1
            )
    except BadRequestError:  # no such bucket (``_store_errors``' 400): nothing lies under it
        return False
    return bool(reply.get("KeyCount") or reply.get("Contents"))


@functools.lru_cache(maxsize=8)
def _client(endpoint_url: str | None) -> Any:
    """One client per endpoint (thread-safe; building one reads botocore's service models, a
    few hundred ms); it refreshes expiring role credentials by itself."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BadRequestError("s3:// adapter sources need boto3: pip install 'loraserve[s3]'") from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def _list(client: Any, src: str, bucket: str, prefix: str, limits: ArchiveLimits) -> list[S3Object]:
    objects: list[S3Object] = []
    total = 0
    with _store_errors(src):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue  # the folder's own marker object
                _check_key(src, relative)
                total += int(item["Size"])
                objects.append(S3Object(relative, int(item["Size"]), str(item.get("ETag", ""))))
                if len(objects) > limits.max_entries:
                    raise BadRequestError(
                        f"src {src} holds more than {limits.max_entries} objects (max_archive_entries)"
                    )
                if total > limits.max_bytes:
                    raise BadRequestError(
                        f"src {src} holds more than {limits.max_bytes} bytes (max_archive_bytes)"
                    )
    if not objects:
        raise BadRequestError(f"src {src} does not exist: no objects under s3://{bucket}/{prefix}")
    return sorted(objects, key=lambda o: o.key)


def _check_key(src: str, relative: str) -> None:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or "\\" in relative or "\x00" in relative:
        raise BadRequestError(f"src {src} holds an object with an unsafe name {relative!r}")


def _listing_digest(bucket: str, key: str, objects: list[S3Object]) -> str:
    hasher = hashlib.sha256(f"{bucket}\n{key}\n".encode())
    for obj in objects:
        hasher.update(f"{obj.key}\0{obj.size}\0{obj.etag}\n".encode())
    return hasher.hexdigest()[:24]


def _download_archive(
    client: Any, src: str, bucket: str, key: str, scratch: Path, limits: ArchiveLimits
) -> Path:
    with _store_errors(src):
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    if size > limits.max_bytes:
        raise BadRequestError(f"src {src} is larger than {limits.max_bytes} bytes (max_archive_bytes)")
    scratch.mkdir(parents=True, exist_ok=True)
    suffix = next(s for s in ARCHIVE_SUFFIXES if key.lower().endswith(s))
    fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=suffix, dir=scratch)
    os.close(fd)
    _get(client, src, bucket, key, Path(name), size)
    return Path(name)


def _get(client: Any, src: str, bucket: str, key: str, dest: Path, size: int) -> None:
    """Download one object, refusing more bytes than its listing said (it changed meanwhile)."""
    with _store_errors(src), dest.open("wb") as out:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        written = 0
        for chunk in body.iter_chunks(1 << 20):
            written += len(chunk)
            if written > size:
                raise BadGatewayError(f"fetching {src}: object {key} changed while it was read")
            out.write(chunk)


@contextlib.contextmanager
def _store_errors(src: str) -> Iterator[None]:
    """boto3's exceptions as loraserve's: a missing object or bucket is the caller's 400, a
    refusal or an unreachable store is a 502 — named, never with credentials."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound"):
            raise BadRequestError(f"src {src} does not exist ({code})") from None
        raise BadGatewayError(f"fetching {src}: the store answered {code or 'an error'}") from None
    except NoCredentialsError:
        raise BadGatewayError(
            f"fetching {src}: no AWS credentials found (environment, shared config or role)"
        ) from None
    except BotoCoreError as exc:
        raise BadGatewayError(f"fetching {src} failed: {type(exc).__name__}") from None
