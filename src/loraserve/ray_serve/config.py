"""Settings of the Ray Serve application, parsed once: which model, how many replicas (or
autoscaling bounds), each replica's resources and adapter LRU size, where the state lives, and
the access settings the ingress enforces as ``loraserve serve`` does (``ServerConfig``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraserve.config import ModelConfig, RemoteAccess, ServerConfig
from loraserve.errors import ConfigError
from loraserve.handler_kind import resolve_handler


@dataclass(slots=True)
class RayAppConfig:
    model_dir: Path
    model_name: str = ""  # default: the model directory's name
    replicas: int = 1
    max_adapters_per_replica: int = 16  # Ray's multiplex LRU; the engine's tiers sit under it
    state_dir: Path | None = None  # default: the model directory (shared by every replica)
    allowed_adapter_roots: list[Path] = field(default_factory=list)
    allowed_adapter_urls: list[str] = field(default_factory=list)  # http(s)/s3 prefixes
    s3_endpoint_url: str | None = None
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0  # > 0: the engine runs on the GPU Ray gives the replica
    autoscaling: dict[str, Any] | None = None  # Ray Serve's autoscaling_config, passed through
    max_ongoing_requests: int = 64  # per replica; they share its continuous batch
    sync_interval_s: float = 1.0  # how often replicas follow the shared registry
    options: dict[str, str] = field(default_factory=dict)  # serving.properties option.* overrides
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "loraserve"
    # loraserve serve's access settings, with its defaults (README "Security and limits")
    api_token: str | None = field(default=None, repr=False)
    management_token: str | None = field(default=None, repr=False)
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # empty: loopback names on loopback
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir).expanduser().resolve()
        if not (self.model_dir / "serving.properties").is_file():
            raise ConfigError(
                f"{self.model_dir} has no serving.properties; --model takes a model "
                "directory served by the built-in engine (option.model_id=...)"
            )
        if not _builtin(self.model_dir, self.model_config()):
            raise ConfigError(
                f"{self.model_dir} is not a built-in-engine model (it needs option.model_id "
                "and no model.py); Ray scale-out serves built-in-engine models"
            )
        self.model_name = self.model_name or self.model_dir.name
        if self.replicas < 1 or self.max_adapters_per_replica < 1:
            raise ConfigError("--replicas and --max-adapters-per-replica must be >= 1")
        if self.sync_interval_s <= 0:
            raise ConfigError("sync_interval_s must be > 0")
        self.state_dir = Path(self.state_dir or self.model_dir).expanduser().resolve()
        self.allowed_adapter_roots = [Path(p).expanduser().resolve() for p in self.allowed_adapter_roots]
        self.server_config()  # ServerConfig's checks of the port, limits and tokens, at start-up

    def model_config(self) -> ModelConfig:
        config = ModelConfig.from_directory(self.model_dir)
        config.options.update(self.options)
        return config

    @property
    def loraserve_dir(self) -> Path:
        """``<state_dir>/.loraserve``: state.json (as ``loraserve serve`` has it) and replicas/."""
        assert self.state_dir is not None
        return self.state_dir / ".loraserve"

    def replica_properties(self) -> dict[str, str]:
        """What the built-in handler's warm-up call gets, as ``loraserve serve`` builds it."""
        return self.model_config().handler_properties(self.model_dir)

    @property
    def remote_access(self) -> RemoteAccess:
        return RemoteAccess(list(self.allowed_adapter_urls), self.s3_endpoint_url)

    def adapter_roots(self) -> list[Path]:
        return self.allowed_adapter_roots or [self.model_dir, self.loraserve_dir]

    def server_config(self) -> ServerConfig:
        """The ``ServerConfig`` loraserve's routes and access policy read (adapter roots,
        tokens, Host / Origin rules, body bounds)."""
        return ServerConfig(
            host=self.host,
            port=self.port,
            state_dir=self.state_dir,
            allowed_adapter_roots=self.adapter_roots(),
            allowed_adapter_urls=list(self.allowed_adapter_urls),
            s3_endpoint_url=self.s3_endpoint_url,
            api_token=self.api_token,
            management_token=self.management_token,
            allowed_origins=list(self.allowed_origins),
            allowed_hosts=list(self.allowed_hosts),
            max_request_bytes=self.max_request_bytes,
            max_json_depth=self.max_json_depth,
        )

    def replica_deployment_options(self) -> dict[str, Any]:
        """``Deployment.options`` for the engine replicas: a fixed count or autoscaling."""
        actor = {"num_cpus": self.num_cpus_per_replica, "num_gpus": self.num_gpus_per_replica}
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscaling:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.replicas
        return options


def _builtin(model_dir: Path, config: ModelConfig) -> bool:
    try:
        return resolve_handler(model_dir, config).builtin
    except ConfigError:
        return False
