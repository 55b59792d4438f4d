"""Command line: ``loraserve serve`` starts the server; ``loraserve ray`` scales it out on Ray Serve."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loraserve import __version__
from loraserve.access_options import access_flags, add_access_arguments
from loraserve.api.request_log import configure_logging
from loraserve.config import ServerConfig, build_server_config, parse_properties, settings_from_env
from loraserve.djl_config import from_djl_config
from loraserve.errors import ConfigError, LoraserveError
from loraserve.ray_serve.launcher import add_ray_parser, ray_main

LOG_FORMAT_HELP = "one line per request, and every other log record, as text or as JSON objects"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraserve",
        description="A model server where LoRA adapters are first-class: 'loraserve demo' runs "
        "SmolLM2 with demo adapters, 'loraserve serve' serves a model store, 'loraserve ray' scales "
        "out on Ray Serve.",
    )
    parser.add_argument("--version", action="version", version=f"loraserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model store over HTTP")
    serve.add_argument("--model-store", help="directory of models (or one model directory)")
    serve.add_argument(
        "--models",
        nargs="*",
        default=None,
        metavar="NAME=PATH",
        help="extra models: a directory, file:// URL or archive each",
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", help="port (default 8080; SAGEMAKER_BIND_TO_PORT honoured)")
    serve.add_argument("--config", help="a key=value properties file of these settings")
    add_root_arguments(serve)
    add_access_arguments(serve)  # tokens, Host / Origin: the same options as `loraserve ray`
    serve.add_argument(
        "--state-dir", help="where the adapter registry is persisted (default: <model-store>/.loraserve)"
    )
    serve.add_argument(
        "--max-loaded-models",
        help="multi-model endpoints: evict the least recently used model above this many (0 = no limit)",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-format", choices=("text", "json"), default="text", help=LOG_FORMAT_HELP)
    serve.add_argument(
        "--secure-mode",
        action="store_true",
        help="refuse adapters and models carrying code (model.py, requirements.txt) or pickle files, "
        "and trust_remote_code, as SageMaker Secure Mode does (also LORASERVE_SECURE_MODE=true)",
    )
    demo = sub.add_parser("demo", help="serve the embedded SmolLM2-135M-Instruct model")
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", default=None)
    add_root_arguments(demo)  # the 403 for a source outside them names these flags
    demo.add_argument("--log-level", default="INFO")
    demo.add_argument("--log-format", choices=("text", "json"), default="text", help=LOG_FORMAT_HELP)
    add_ray_parser(sub)
    return parser


def add_root_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allowed-adapter-roots",
        nargs="*",
        default=None,
        metavar="DIR",
        help="directories adapter sources may come from "
        "(default: the model store and each model's directory)",
    )
    parser.add_argument(
        "--allowed-model-roots",
        nargs="*",
        default=None,
        metavar="DIR",
        help="directories POST /models?url= and workflow files may come from (default: the model store)",
    )
    parser.add_argument(
        "--allowed-adapter-urls",
        nargs="*",
        default=None,
        metavar="PREFIX",
        help="http(s) and s3 URL prefixes adapters may be fetched from (default: none)",
    )
    parser.add_argument(
        "--adapter-resolvers",
        nargs="*",
        default=None,
        metavar="ROOT",
        help="directories and s3:// prefixes where an adapter a request names but nobody "
        "registered is looked up as ROOT/<name> and registered on first use (default: none)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=None,
        metavar="URL",
        help="an S3-compatible store for s3:// adapter sources (default: AWS, as boto3 finds it)",
    )


def root_flags(args: argparse.Namespace) -> dict[str, str | None]:
    """The allowed roots given, comma-joined as the settings layer takes lists."""
    keys = ("allowed_adapter_roots", "allowed_model_roots", "allowed_adapter_urls", "adapter_resolvers")
    flags = {key: ",".join(getattr(args, key)) if getattr(args, key) else None for key in keys}
    return flags | {"s3_endpoint_url": args.s3_endpoint_url}


def demo_store() -> Path:
    """A model store in the user's cache: SmolLM2 (converted once) and any shipped demo adapters."""
    import shutil

    from loraserve.model.default_model import smollm2_path
    from loraserve.model.loader import cache_root

    model_path = smollm2_path()
    store = cache_root() / "demo-store"
    model_dir = store / "smollm2"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "serving.properties").write_text(
        f"engine=Python\noption.model_id={model_path}\noption.dtype=auto\n"
        "option.max_rolling_batch_size=32\noption.max_lora_rank=64\n"
    )
    shipped = Path(__file__).parent / "demo_adapters"
    if shipped.is_dir():
        for adapter in shipped.iterdir():
            copy = model_dir / "adapters" / adapter.name
            if adapter.is_dir() and not _same_files(adapter, copy):  # missing, or from an older release
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(adapter, copy)
    return store


def _same_files(shipped: Path, copy: Path) -> bool:
    import filecmp

    names = sorted(p.name for p in shipped.iterdir())
    if not copy.is_dir() or sorted(p.name for p in copy.iterdir()) != names:
        return False
    _, differ, unreadable = filecmp.cmpfiles(shipped, copy, names, shallow=False)
    return not differ and not unreadable


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    file_layer: dict[str, str] = {}
    if args.config:
        file_layer = from_djl_config(parse_properties(Path(args.config).read_text(encoding="utf-8")))
    flags = {
        "model_store": args.model_store,
        "host": args.host,
        "port": args.port,
        "state_dir": args.state_dir,
        "max_loaded_models": args.max_loaded_models,
        "models": " ".join(args.models) if args.models else None,
        **access_flags(args),
        **root_flags(args),
    }
    config = build_server_config([file_layer, settings_from_env(), flags])
    if config.model_store is not None and not config.model_store.is_dir():
        raise ConfigError(f"the model store {config.model_store} is not a directory (--model-store)")
    return config


def demo_config(args: argparse.Namespace, store: Path) -> ServerConfig:
    """The demo's settings: its store, then the environment, then the flags it takes."""
    flags = {"model_store": str(store), "host": args.host, "port": args.port, **root_flags(args)}
    return build_server_config([settings_from_env(), flags])


def serve(config: ServerConfig, log_level: str) -> None:
    import uvicorn

    from loraserve.api.app import create_app

    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=log_level.lower(),
        access_log=False,  # loraserve writes its own line per request (api.request_log)
        timeout_graceful_shutdown=10,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, getattr(args, "log_format", "text"))
    if getattr(args, "secure_mode", False):
        os.environ["LORASERVE_SECURE_MODE"] = "true"  # read where adapters and models are checked
    if args.command == "ray":
        return ray_main(args)
    try:
        config = demo_config(args, demo_store()) if args.command == "demo" else config_from_args(args)
    except LoraserveError as exc:
        sys.exit(f"loraserve: {exc.message}")
    serve(config, args.log_level)


if __name__ == "__main__":
    main()
