"""SageMaker Secure Mode, as DJL Serving's plugin applies it: with ``SAGEMAKER_SECURE_MODE=true``
the controls named in ``SAGEMAKER_SECURITY_CONTROLS`` are enforced (none named: none enforced);
loraserve's own ``--secure-mode`` (``LORASERVE_SECURE_MODE``) enforces all of them.

Adapters are checked when registered (before anything is loaded; a refusal is a 400 and nothing
is registered): no ``model.py`` (custom code), no ``requirements.txt`` (package installs), no
pickle-format file anywhere inside (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``: loading one
can run code). Models are checked when loaded: the same files, a custom entry point, and
``option.trust_remote_code=true``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loraserve.errors import BadRequestError, ConfigError

CUSTOM_CODE = "DISALLOW_CUSTOM_INFERENCE_SCRIPTS"
REQUIREMENTS = "DISALLOW_REQUIREMENTS_TXT"
PICKLES = "DISALLOW_PICKLE_FILES"
REMOTE_CODE = "DISALLOW_TRUST_REMOTE_CODE"
ALL_CONTROLS = frozenset({CUSTOM_CODE, REQUIREMENTS, PICKLES, REMOTE_CODE})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True, slots=True)
class SecureMode:
    controls: frozenset[str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecureMode | None:
        """The controls in force, or None when secure mode is off."""
        env = os.environ if environ is None else environ
        if env.get("LORASERVE_SECURE_MODE", "").lower() == "true":
            return cls(ALL_CONTROLS)
        if env.get("SAGEMAKER_SECURE_MODE", "").lower() != "true":
            return None
        named = {
            c.strip().upper() for c in env.get("SAGEMAKER_SECURITY_CONTROLS", "").split(",") if c.strip()
        }
        return cls(frozenset(named))

    def check_adapter(self, path: Path) -> None:
        """Raise a 400 naming the first forbidden file in the adapter at ``path``."""
        problem = self._forbidden_file(path)
        if problem:
            raise BadRequestError(f"{problem} found in adapter at {path}; {_WHY[problem.split()[0]]}")

    def check_model(self, model_dir: Path, entry_point: str | None, options: Mapping[str, str]) -> None:
        """Raise a ConfigError naming what the model may not use in secure mode."""
        if CUSTOM_CODE in self.controls and entry_point and not entry_point.startswith("djl_python."):
            raise ConfigError(f"option.entryPoint={entry_point} is prohibited in secure mode (custom code)")
        if REMOTE_CODE in self.controls and options.get("trust_remote_code", "").lower() == "true":
            raise ConfigError("option.trust_remote_code=true is prohibited in secure mode")
        problem = self._forbidden_file(model_dir)
        if problem:
            raise ConfigError(f"{problem} found in model at {model_dir}; {_WHY[problem.split()[0]]}")

    def _forbidden_file(self, folder: Path) -> str | None:
        if not folder.is_dir():
            return None  # a single file or a name the handler resolves: nothing to scan here
        if CUSTOM_CODE in self.controls and (folder / "model.py").is_file():
            return "custom model.py"
        if REQUIREMENTS in self.controls and (folder / "requirements.txt").is_file():
            return "requirements.txt"
        if PICKLES in self.controls:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
                    return f"pickle-format file {path.relative_to(folder)}"
        return None


def check_adapter(path: Path) -> None:
    """The adapter at ``path`` under the secure mode in force (none: nothing to check)."""
    policy = SecureMode.from_env()
    if policy is not None:
        policy.check_adapter(path)


def check_model(model_dir: Path, entry_point: str | None, options: Mapping[str, str]) -> None:
    """The model at ``model_dir`` under the secure mode in force (none: nothing to check)."""
    policy = SecureMode.from_env()
    if policy is not None:
        policy.check_model(model_dir, entry_point, options)


_WHY = {
    "custom": "custom inference code is prohibited in secure mode",
    "requirements.txt": "installing packages is prohibited in secure mode",
    "pickle-format": "only the safetensors format is permitted in secure mode",
}
