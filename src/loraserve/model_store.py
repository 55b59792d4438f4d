"""Find model directories: a model store (one model or one per sub-directory), NAME=PATH
specs and URLs given to the management API."""

from __future__ import annotations

from pathlib import Path

from loraserve.adapters.archives import ARCHIVE_SUFFIXES
from loraserve.adapters.sources import ensure_inside, exists, extract_archive, is_archive, local_path_of
from loraserve.errors import BadRequestError

MODEL_MARKERS = ("serving.properties", "model.py", "workflow.json")


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in MODEL_MARKERS)


def discover_models(store: Path) -> dict[str, Path]:
    """A store that is itself a model (SageMaker's ``/opt/ml/model``) is one model named after
    the directory; otherwise every sub-directory that looks like a model is one."""
    if not store.is_dir():
        raise BadRequestError(f"model store {store} is not a directory")
    if is_model_dir(store):
        return {store.name: store}
    return {
        child.name: child
        for child in sorted(store.iterdir())
        if not child.name.startswith(".") and is_model_dir(child)
    }


def is_workflow_dir(path: Path) -> bool:
    """A directory served as a workflow: ``workflow.json`` and no model of its own."""
    return (path / "workflow.json").is_file() and not any(
        (path / marker).is_file() for marker in ("serving.properties", "model.py")
    )


def find_in_store(store: Path | None, name: str) -> Path | None:
    """``name`` as a model directory or archive in the store (multi-model endpoints)."""
    if store is None or "/" in name or name.startswith("."):
        return None
    for candidate in (store / name, *(store / f"{name}{s}" for s in ARCHIVE_SUFFIXES)):
        if is_model_dir(candidate) or (candidate.is_file() and is_archive(candidate)):
            return candidate
    return None


def archive_stem(name: str) -> str:
    """``base-1.tar.gz`` → ``base-1``: the name a model packed as an archive is served under."""
    for suffix in (*ARCHIVE_SUFFIXES, ".tar"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def resolve_model_url(url: str, model_store: Path | None, scratch: Path) -> Path:
    """A path, ``file://`` URL or archive to a model directory (see ``model_url_path``)."""
    path = model_url_path(url, model_store)
    if not exists(path):
        raise BadRequestError(f"model url {url} does not exist (resolved to {path})")
    if path.is_file() and is_archive(path):
        path = extract_archive(path, scratch)
    if not is_model_dir(path):
        raise BadRequestError(f"{path} is not a model directory: it needs serving.properties or model.py")
    return path


def model_url_path(url: str, model_store: Path | None) -> Path:
    """Where a model URL points. A relative one (``file:models/m`` or ``models/m``) is found in
    the working directory first, as DJL does, then in the store. The same path is the one
    checked against the allowed roots and the one loaded."""
    path = local_path_of(url, Path.cwd())
    if not exists(path) and model_store is not None:
        path = local_path_of(url, model_store)
    return path


def ensure_model_url_allowed(url: str, model_store: Path | None, roots: list[Path]) -> Path:
    """A model URL given over the API must lie inside the allowed model roots (403 if not):
    registering a model runs its ``model.py``."""
    path = model_url_path(url, model_store)
    ensure_inside(path, roots, kind="model")
    return path


def startup_adapter_dirs(model_dir: Path) -> dict[str, Path]:
    """Sub-directories of ``<model>/adapters/``, each registered at start-up under its name."""
    root = model_dir / "adapters"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def is_workflow_url(url: str) -> bool:
    """A ``--models`` / ``load_models`` entry that names a workflow folder (DJL allows that)."""
    try:
        return is_workflow_dir(local_path_of(url, Path.cwd()))
    except BadRequestError:
        return False  # a URL scheme loraserve cannot open; the model load reports it


def startup_workflow_dirs(store: Path | None, models: dict[str, str]) -> list[Path]:
    """Workflows to load at start: the store's workflow folders and workflow entries of models."""
    paths = [p for p in (discover_models(store).values() if store is not None else []) if is_workflow_dir(p)]
    return paths + [local_path_of(u, Path.cwd()) for u in models.values() if is_workflow_url(u)]
