"""The access policy's command-line options, defined once for ``loraserve serve`` and
``loraserve ray``: bearer tokens and the Host / Origin rules, with the ``LORASERVE_*``
environment variables behind them (and the body limits, which only the environment sets)."""

from __future__ import annotations

import argparse
from typing import Any

from loraserve.config import build_server_config, settings_from_env

# ServerConfig's fields that SecurityMiddleware and BodyLimitMiddleware read.
ACCESS_SETTINGS = (
    "api_token",
    "management_token",
    "allowed_origins",
    "allowed_hosts",
    "max_request_bytes",
    "max_json_depth",
)


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-token",
        help="bearer token inference routes require (prefer LORASERVE_API_TOKEN: flags show in ps)",
    )
    parser.add_argument(
        "--management-token",
        help="bearer token management routes require (default: the API token; or LORASERVE_MANAGEMENT_TOKEN)",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="*",
        default=None,
        metavar="ORIGIN",
        help="extra browser origins allowed to send state-changing requests",
    )
    parser.add_argument(
        "--allowed-hosts",
        nargs="*",
        default=None,
        metavar="HOST",
        help="Host header names accepted (default: loopback names when bound to loopback, any otherwise)",
    )


def access_flags(args: argparse.Namespace) -> dict[str, str]:
    """The options given, as a settings layer for ``build_server_config`` (lists comma-joined)."""
    given = {
        "api_token": args.api_token,
        "management_token": args.management_token,
        "allowed_origins": ",".join(args.allowed_origins or []),
        "allowed_hosts": ",".join(args.allowed_hosts or []),
    }
    return {key: value for key, value in given.items() if value}


def access_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Flags over ``LORASERVE_*`` variables, parsed and checked as ``loraserve serve`` parses
    them: ``ServerConfig``'s access fields, by name."""
    env = {k: v for k, v in settings_from_env(environ).items() if k in ACCESS_SETTINGS}
    config = build_server_config([env, access_flags(args)])
    return {key: getattr(config, key) for key in ACCESS_SETTINGS}
