"""``loraserve ray``: start (or join) a Ray cluster and run the application until interrupted.
Imports Ray only when run, so ``loraserve --help`` works without the ``ray`` extra."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from loraserve.access_options import access_settings, add_access_arguments
from loraserve.errors import ConfigError
from loraserve.ray_serve.config import RayAppConfig

log = logging.getLogger("loraserve.ray")


def add_ray_parser(sub: Any) -> None:
    ray = sub.add_parser("ray", help="scale out on Ray Serve: N engine replicas behind one endpoint")
    ray.add_argument("--model", required=True, help="a built-in-engine model directory")
    ray.add_argument("--name", default="", help="served model name (default: the directory's name)")
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas (without autoscaling)")
    ray.add_argument("--min-replicas", type=int, help="autoscaling lower bound (with --max-replicas)")
    ray.add_argument("--max-replicas", type=int, help="turns on Ray Serve autoscaling up to this many")
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=16.0,
        help="autoscaling target of requests in flight per replica",
    )
    ray.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="requests one replica takes at once (they share its continuous batch)",
    )
    ray.add_argument(
        "--max-adapters-per-replica",
        type=int,
        default=16,
        help="Ray's per-replica adapter LRU (the engine's tiers sit under it)",
    )
    ray.add_argument("--num-cpus-per-replica", type=float, default=1.0)
    ray.add_argument(
        "--num-gpus-per-replica",
        type=float,
        default=0.0,
        help="> 0 runs each replica's engine on the GPU Ray assigns it",
    )
    ray.add_argument(
        "--option",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="serving.properties option.* overrides, e.g. threads=4 device=cuda",
    )
    ray.add_argument(
        "--state-dir", help="shared adapter registry (every node must see it); default: the model directory"
    )
    ray.add_argument("--allowed-adapter-roots", nargs="*", default=[], metavar="DIR")
    ray.add_argument(
        "--allowed-adapter-urls",
        nargs="*",
        default=[],
        metavar="PREFIX",
        help="http(s) and s3 URL prefixes adapters may be fetched from (default: none)",
    )
    ray.add_argument("--s3-endpoint-url", default=None, metavar="URL", help="an S3-compatible store")
    add_access_arguments(ray)  # loraserve serve's options; the ingress enforces its rules
    ray.add_argument("--host", default="127.0.0.1", help="HTTP bind address of Ray Serve's proxy")
    ray.add_argument("--port", type=int, default=8080)
    ray.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (e.g. auto or ray://head:10001); default: start one",
    )
    ray.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started cluster")
    ray.add_argument("--log-level", default="INFO")


def parse_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE (a serving.properties option), got {item!r}")
        options[key.strip().removeprefix("option.")] = value.strip()
    return options


def config_from_args(args: argparse.Namespace) -> RayAppConfig:
    autoscaling = None
    if args.max_replicas is not None:
        autoscaling = {
            "min_replicas": args.min_replicas or 1,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    return RayAppConfig(
        model_dir=Path(args.model),
        model_name=args.name,
        replicas=args.replicas,
        max_adapters_per_replica=args.max_adapters_per_replica,
        state_dir=args.state_dir,
        allowed_adapter_roots=[Path(p) for p in args.allowed_adapter_roots],
        allowed_adapter_urls=list(args.allowed_adapter_urls),
        s3_endpoint_url=args.s3_endpoint_url,
        num_cpus_per_replica=args.num_cpus_per_replica,
        num_gpus_per_replica=args.num_gpus_per_replica,
        autoscaling=autoscaling,
        max_ongoing_requests=args.max_ongoing_requests,
        options=parse_options(args.option),
        host=args.host,
        port=args.port,
        **access_settings(args),
    )


def run(
    config: RayAppConfig,
    address: str | None = None,
    num_cpus: int | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or Ctrl-C); then remove what this call started."""
    from loraserve.ray_serve import require_ray

    require_ray()
    import ray
    from ray import serve

    from loraserve.ray_serve.app import build_app

    own_cluster = address is None
    stop = stop or threading.Event()
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # clean up on SIGTERM as on Ctrl-C
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config), name=config.app_name, route_prefix="/")
        log.info(
            "loraserve on Ray Serve: http://%s:%d (model %s)", config.host, config.port, config.model_name
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            log.info("stopping")
    finally:
        if own_cluster:
            serve.shutdown()
            ray.shutdown()
        else:  # a shared cluster stays up; only this application goes
            serve.delete(config.app_name)


def ray_main(args: argparse.Namespace) -> None:
    """The ``loraserve ray`` command: a bad setting exits with its message, not a traceback."""
    try:
        config = config_from_args(args)
        run(config, args.address, args.num_cpus)
    except ConfigError as exc:
        sys.exit(f"loraserve: {exc.message}")
