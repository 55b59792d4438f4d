"""What an http(s) adapter source may be, before anything is fetched."""

from __future__ import annotations

import pytest

from loraserve.adapters.remote import fetch_archive, is_remote, shown
from loraserve.errors import BadRequestError, ForbiddenError


def test_a_url_is_shown_without_credentials_query_or_fragment():
    assert shown("https://u:p@store.example:8443/a/x.tar.gz?X-Amz-Signature=s#sha256=00") == (
        "https://store.example:8443/a/x.tar.gz?…"
    )
    assert is_remote("https://x/y.zip") and not is_remote("/local/x.zip") and not is_remote("file:///x")


@pytest.mark.parametrize(
    "url,error,says",
    [
        ("https://store.example/a/x.tar.gz", ForbiddenError, "allowed URL prefix"),
        ("https://store.example/ok/x.bin", BadRequestError, "archive"),
        ("https://u:p@store.example/ok/x.tar.gz", BadRequestError, "credentials"),
        ("https://store.example/ok/x.tar.gz#md5=1", BadRequestError, "sha256"),
    ],
)
def test_refused_before_any_fetch(tmp_path, url, error, says):
    with pytest.raises(error, match=says):
        fetch_archive(url, ["https://store.example/ok/"], tmp_path, 1024)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_verified_archive_already_fetched_is_not_fetched_again(tmp_path):
    sha = "ab" * 32
    (tmp_path / f"{sha}.zip").write_bytes(b"PK")
    found = fetch_archive(
        f"https://store.example/ok/x.zip#sha256={sha}", ["https://store.example/ok/"], tmp_path, 1
    )
    assert found == tmp_path / f"{sha}.zip"
