"""Archive bounds and checks, removal of unpacked copies, allowed roots for model and workflow
sources, and names that cannot escape the state directory."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from loraserve.adapters.archives import ArchiveLimits, extract_archive, prune_extractions
from loraserve.errors import BadRequestError, ForbiddenError
from loraserve.model_store import ensure_model_url_allowed
from loraserve.names import validate_model_name
from loraserve.workflows.spec import WorkflowError, load_document, parse_workflow
from loraserve.workflows.templates import template_text

SMALL = ArchiveLimits(max_bytes=1024 * 1024, max_entries=10)


def tar_gz(path: Path, entries: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def zipped(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def leftovers(scratch: Path) -> list[str]:
    return sorted(p.name for p in scratch.iterdir()) if scratch.exists() else []


@pytest.mark.parametrize("maker", [tar_gz, zipped])
def test_bomb_is_refused_before_it_is_written(tmp_path, maker):
    archive = maker(
        tmp_path / ("bomb.tar.gz" if maker is tar_gz else "bomb.zip"), {"a": b"\0" * (2 * 1024 * 1024)}
    )  # ~2 KB compressed, 2 MiB unpacked
    assert archive.stat().st_size < 20_000
    with pytest.raises(BadRequestError, match="max_archive_bytes"):
        extract_archive(archive, tmp_path / "scratch", SMALL)
    assert leftovers(tmp_path / "scratch") == []


@pytest.mark.parametrize("maker,name", [(tar_gz, "many.tar.gz"), (zipped, "many.zip")])
def test_entry_count_is_bounded(tmp_path, maker, name):
    archive = maker(tmp_path / name, {f"f{i}": b"x" for i in range(11)})
    with pytest.raises(BadRequestError, match="max_archive_entries"):
        extract_archive(archive, tmp_path / "scratch", SMALL)
    assert leftovers(tmp_path / "scratch") == []


def test_within_bounds_unpacks(tmp_path):
    archive = tar_gz(tmp_path / "ok.tar.gz", {"ok/adapter_config.json": b"{}"})
    root = extract_archive(archive, tmp_path / "scratch", SMALL)
    assert (root / "adapter_config.json").read_bytes() == b"{}"


def test_encrypted_zip_is_a_400(tmp_path):
    archive = zipped(tmp_path / "locked.zip", {"adapter_config.json": b"{}"})
    data = bytearray(archive.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = data.find(signature)
        data[at + flag_at] |= 0x1
    archive.write_bytes(bytes(data))
    with pytest.raises(BadRequestError, match="encrypted"):
        extract_archive(archive, tmp_path / "scratch", SMALL)


@pytest.mark.parametrize("name,cut", [("cut.tar.gz", 0.5), ("cut.zip", 0.5), ("junk.zip", 0.0)])
def test_damaged_archive_is_a_400(tmp_path, name, cut):
    maker = zipped if name.endswith(".zip") else tar_gz
    whole = maker(tmp_path / ("src" + name), {"adapter_config.json": bytes(range(256)) * 400}).read_bytes()
    (tmp_path / name).write_bytes(whole[: int(len(whole) * cut)] or b"not an archive")
    with pytest.raises(BadRequestError, match=name):
        extract_archive(tmp_path / name, tmp_path / "scratch", SMALL)
    assert leftovers(tmp_path / "scratch") == []


def test_prune_removes_only_unused_copies(tmp_path):
    scratch = tmp_path / "scratch"
    for name in ("used-1", "free-2", ".extract-busy"):
        (scratch / name / "inner").mkdir(parents=True)
    removed = prune_extractions(scratch, [scratch / "used-1" / "inner", tmp_path / "elsewhere"])
    assert [p.name for p in removed] == ["free-2"]
    assert leftovers(scratch) == [".extract-busy", "used-1"]


@pytest.mark.parametrize("name", ["../../../x", "a/b", "..", ".hidden", "x\x01y", "x" * 129, "", "a b"])
def test_bad_model_names(name):
    with pytest.raises(BadRequestError):
        validate_model_name(name)


def test_workflow_model_names_cannot_escape():
    document = {"name": "w", "models": {"../../../x": "m"}, "workflow": {"out": ["../../../x", "in"]}}
    with pytest.raises(BadRequestError, match="invalid model name"):
        parse_workflow(document)
    with pytest.raises(BadRequestError, match="invalid workflow name"):
        parse_workflow({"name": "a/b", "models": {}, "workflow": {"out": "in"}})


def test_model_urls_must_lie_inside_the_roots(tmp_path):
    inside = tmp_path / "store" / "m"
    inside.mkdir(parents=True)
    assert ensure_model_url_allowed(str(inside), None, [tmp_path / "store"]) == inside
    for url in ("/etc", f"{tmp_path}/store/../elsewhere", "file:///etc/passwd"):
        with pytest.raises(ForbiddenError, match="allowed model roots"):
            ensure_model_url_allowed(url, tmp_path / "store", [tmp_path / "store"])
    with pytest.raises(ForbiddenError, match="none configured"):
        ensure_model_url_allowed(str(inside), None, [])


def test_template_files_must_lie_inside_the_roots(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:TOPSECRET:0:0\n")
    with pytest.raises(ForbiddenError):
        template_text(str(secret), None, [tmp_path / "store"])


@pytest.mark.parametrize("text", ["password: [TOPSECRET\n", '{"TOPSECRET": ', "a: b\n TOPSECRET: : :"])
def test_parse_errors_do_not_echo_the_file(text):
    with pytest.raises(WorkflowError) as caught:
        load_document(text, "some-file")
    assert "TOPSECRET" not in caught.value.message and "line" in caught.value.message
