"""Configuration by scope: server settings (flags/env/file) and per-model serving.properties."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.errors import ConfigError

ENV_PREFIX = "LORASERVE_"


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java-style ``key=value`` properties (``#``/``!`` comments, ``:`` also separates)."""
    result: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if sep < 0:
            result[line] = ""
            continue
        result[line[:sep].strip()] = line[sep + 1 :].strip()
    return result


def parse_bool(value: object, name: str) -> bool:
    """Accept the spellings users type for booleans; refuse anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def parse_int(value: object, name: str, minimum: int | None = None) -> int:
    """Parse an integer setting with a message that says which setting was wrong."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


@dataclass(slots=True)
class ModelConfig:
    """What one model directory's ``serving.properties`` says, parsed once."""

    engine: str = "Python"
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    min_workers: int = 1
    max_workers: int = 1
    job_queue_size: int = 1000
    max_idle_seconds: int = 60
    entry_point: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_workers < self.min_workers:
            self.max_workers = self.min_workers

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> ModelConfig:
        """Build from raw properties; unknown keys are kept for the handler."""
        options = {k[len("option.") :]: v for k, v in props.items() if k.startswith("option.")}
        known = {
            "engine",
            "batch_size",
            "max_batch_delay",
            "minWorkers",
            "maxWorkers",
            "min_worker",
            "max_worker",
            "job_queue_size",
            "max_idle_time",
        }
        extra = {k: v for k, v in props.items() if not k.startswith("option.") and k not in known}
        min_w = props.get("minWorkers", props.get("min_worker", "1"))
        max_w = props.get("maxWorkers", props.get("max_worker", min_w))
        return cls(
            engine=props.get("engine", "Python"),
            batch_size=parse_int(props.get("batch_size", 1), "batch_size", 1),
            max_batch_delay_ms=parse_int(props.get("max_batch_delay", 100), "max_batch_delay", 0),
            min_workers=parse_int(min_w, "minWorkers", 1),
            max_workers=parse_int(max_w, "maxWorkers", 1),
            job_queue_size=parse_int(props.get("job_queue_size", 1000), "job_queue_size", 1),
            max_idle_seconds=parse_int(props.get("max_idle_time", 60), "max_idle_time", 0),
            entry_point=options.get("entryPoint"),
            options=options,
            extra=extra,
        )

    @classmethod
    def from_directory(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / "serving.properties"
        if not path.is_file():
            return cls()
        return cls.from_properties(parse_properties(path.read_text(encoding="utf-8")))

    def handler_properties(self, model_dir: Path) -> dict[str, str]:
        """Properties handed to the handler at initialisation, as DJL does (``option.`` dropped)."""
        props = {**self.extra, **self.options}
        props.update(
            model_dir=str(model_dir),
            engine=self.engine,
            batch_size=str(self.batch_size),
        )
        return props


@dataclass(frozen=True, slots=True)
class RemoteAccess:
    """Where adapters may be fetched from: URL prefixes (http(s) and s3) and the S3 endpoint
    (None: boto3's own choice)."""

    allowed_urls: list[str] = field(default_factory=list)
    s3_endpoint_url: str | None = None


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_LIST_SETTINGS = (
    "allowed_adapter_roots",
    "allowed_model_roots",
    "allowed_adapter_urls",
    "adapter_resolvers",
    "allowed_origins",
    "allowed_hosts",
)
_POSITIVE = (
    "max_request_bytes",
    "max_archive_bytes",
    "max_archive_entries",
    "max_json_depth",
    "max_workers_per_model",
    "max_adapter_labels",
)


@dataclass(slots=True)
class ServerConfig:
    """Global settings; precedence: flags > ``LORASERVE_*`` env > config file > defaults.
    The security settings and bounds are described in the README's "Security and limits"."""

    host: str = "127.0.0.1"
    port: int = 8080
    model_store: Path | None = None
    models: dict[str, str] = field(default_factory=dict)
    allowed_adapter_roots: list[Path] = field(default_factory=list)
    allowed_adapter_urls: list[str] = field(default_factory=list)  # http(s)/s3 prefixes adapters come from
    s3_endpoint_url: str | None = None  # an S3-compatible store; None: boto3's own choice
    adapter_resolvers: list[str] = field(default_factory=list)  # dirs / s3 prefixes: load on first use
    allowed_model_roots: list[Path] = field(default_factory=list)  # empty: the model store
    state_dir: Path | None = None
    api_token: str | None = field(default=None, repr=False)
    management_token: str | None = field(default=None, repr=False)
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # empty: loopback names on loopback
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 64
    max_archive_bytes: int = 4 * 1024**3
    max_archive_entries: int = 10_000
    max_workers_per_model: int = 8
    max_adapter_labels: int = 100
    worker_start_timeout_s: float = 600.0
    max_loaded_models: int = 0  # multi-model endpoints: 0 = no limit

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_store is not None:
            self.model_store = Path(self.model_store).expanduser().resolve()
        self.allowed_adapter_roots = [Path(p).expanduser().resolve() for p in self.allowed_adapter_roots]
        self.allowed_model_roots = [Path(p).expanduser().resolve() for p in self.allowed_model_roots]
        self.adapter_resolvers = [
            r if r.startswith("s3://") else str(Path(r).expanduser().resolve())
            for r in self.adapter_resolvers
        ]
        self.api_token = self.api_token or None
        self.management_token = self.management_token or None

    @property
    def model_roots(self) -> list[Path]:
        """Where ``POST /models?url=`` and workflow files may come from: the configured roots,
        else the model store, else nowhere."""
        if self.allowed_model_roots:
            return self.allowed_model_roots
        return [self.model_store] if self.model_store else []

    @property
    def remote_access(self) -> RemoteAccess:
        return RemoteAccess(list(self.allowed_adapter_urls), self.s3_endpoint_url or None)

    @property
    def trusted_hosts(self) -> list[str]:
        """Host names a request may address: the configured list, else the loopback names
        when bound to loopback (refusing DNS rebinding), else any (``*``)."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return list(LOOPBACK_HOSTS) if self.host in LOOPBACK_HOSTS else ["*"]

    @property
    def state_file(self) -> Path | None:
        """Where the adapter registry is persisted: the state dir, else the model store."""
        base = self.state_dir or self.model_store
        return None if base is None else Path(base) / ".loraserve" / "state.json"


_SCALAR_SETTINGS = {
    "host": str,
    "port": int,
    "model_store": str,
    "state_dir": str,
    "max_request_bytes": int,
    "allowed_adapter_roots": str,
    "allowed_model_roots": str,
    "allowed_adapter_urls": str,
    "s3_endpoint_url": str,
    "adapter_resolvers": str,
    "allowed_origins": str,
    "allowed_hosts": str,
    "api_token": str,
    "management_token": str,
    "max_json_depth": int,
    "max_archive_bytes": int,
    "max_archive_entries": int,
    "max_workers_per_model": int,
    "max_adapter_labels": int,
    "worker_start_timeout_s": float,
    "max_loaded_models": int,
}


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Read ``LORASERVE_*`` settings (and SageMaker's port variable)."""
    env = os.environ if environ is None else environ
    found = {
        key: env[ENV_PREFIX + key.upper()] for key in _SCALAR_SETTINGS if ENV_PREFIX + key.upper() in env
    }
    if "SAGEMAKER_BIND_TO_PORT" in env:
        found["port"] = env["SAGEMAKER_BIND_TO_PORT"]
    if ENV_PREFIX + "MODELS" in env:
        found["models"] = env[ENV_PREFIX + "MODELS"]
    return found


def build_server_config(layers: list[dict[str, str]]) -> ServerConfig:
    """Merge setting layers, lowest precedence first, into a checked ``ServerConfig``."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    unknown = set(merged) - set(_SCALAR_SETTINGS) - {"models"}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    models = parse_model_specs(merged.pop("models", ""))
    kwargs: dict[str, object] = {
        key: [p.strip() for p in merged.pop(key, "").split(",") if p.strip()] for key in _LIST_SETTINGS
    }
    for key, value in merged.items():
        caster = _SCALAR_SETTINGS[key]
        try:
            kwargs[key] = caster(value) if caster is not str else value
        except ValueError:
            raise ConfigError(f"{key} must be {caster.__name__}, got {value!r}") from None
    for key in ("model_store", "state_dir"):
        if kwargs.get(key):
            kwargs[key] = Path(str(kwargs[key]))
    return ServerConfig(models=models, **kwargs)  # type: ignore[arg-type]


def parse_model_specs(text: str | list[str]) -> dict[str, str]:
    """``NAME=PATH`` items (a list, or comma/space separated text) into a dict."""
    items = text if isinstance(text, list) else text.replace(",", " ").split()
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--models entries must look like NAME=PATH, got {item!r}")
        models[name] = path
    return models
