"""A build killed mid-compile must not wedge later starts (torch waits forever on its lock file)."""

from __future__ import annotations

from loraserve.model import native


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = tmp_path / "loraserve_cpu_kernels_test"
    folder.mkdir()
    (folder / "lock").touch()  # what a SIGKILLed compile leaves behind
    with native._build_lock("loraserve_cpu_kernels_test"):
        assert not (folder / "lock").exists()


def test_builds_without_a_stale_lock_go_ahead(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with native._build_lock("loraserve_cpu_kernels_test"):
        assert (tmp_path / "loraserve_cpu_kernels_test").is_dir()


def _copy_sources(to):
    to.mkdir()
    for path in native._SOURCES.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def test_identical_sources_share_one_build_and_changed_sources_get_their_own(tmp_path, monkeypatch):
    """Two checkouts on one machine used to share one extension name and rebuild it in turn."""
    key = native.build_key("avx2")
    monkeypatch.setattr(native, "_SOURCES", _copy_sources(tmp_path / "checkout"))
    assert native.build_key("avx2") == key  # same sources elsewhere: the same build
    header = tmp_path / "checkout" / "kernels.h"
    header.write_text(header.read_text() + "\n// changed\n")
    assert native.build_key("avx2") != key  # a header counts too
    assert native.extension_name("avx2").startswith("loraserve_cpu_kernels_avx2_")


def test_each_isa_level_is_its_own_build():
    assert native.build_key("avx2") != native.build_key("scalar")


def test_every_checkout_compiles_from_one_pinned_copy_of_the_sources(tmp_path, monkeypatch):
    """torch's build file names its inputs by path: two checkouts compiling from their own trees
    rebuilt each other's identical build on every load (a worker restart waited on it)."""
    build_dir = tmp_path / "ext" / "loraserve_cpu_kernels_avx2_x"
    build_dir.mkdir(parents=True)
    first = native._pinned_sources(build_dir, "loraserve_cpu_kernels_avx2_x")
    stamp = (first / "kernels.h").stat().st_mtime_ns
    monkeypatch.setattr(native, "_SOURCES", _copy_sources(tmp_path / "other-checkout"))
    second = native._pinned_sources(build_dir, "loraserve_cpu_kernels_avx2_x")
    assert second == first and (second / "kernels.h").stat().st_mtime_ns == stamp  # never rewritten
    assert sorted(p.name for p in first.iterdir()) == sorted(
        p.name for p in (tmp_path / "other-checkout").iterdir() if p.suffix in (".cpp", ".h")
    )
    assert [p.name for p in (tmp_path / "ext").iterdir() if p.name.startswith(".")] == []  # no staging left
