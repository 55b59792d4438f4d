"""DJL Serving's ``config.properties`` read as loraserve settings (``loraserve serve --config``).

Translated: ``inference_address`` (one port serves inference and management here, so a
different ``management_address`` is only warned about), ``model_store``, ``load_models``
(``[name[:version:engine:device]=]url`` items, or ``ALL`` / ``NONE``) and ``max_request_size``.
DJL's other keys (netty threads, CORS, error-rate limits, …) have no loraserve equivalent and
are ignored with a warning; a key neither DJL nor loraserve knows is still an error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from loraserve.errors import ConfigError
from loraserve.model_store import archive_stem

log = logging.getLogger("loraserve.config")

DJL_IGNORED = {
    "cluster_address",
    "wait_model_loading",
    "allow_multi_status",
    "number_of_netty_threads",
    "job_queue_size",
    "max_idle_time",
    "batch_size",
    "max_batch_delay",
    "reserved_memory_mb",
    "cors_allowed_origin",
    "cors_allowed_methods",
    "cors_allowed_headers",
    "keystore",
    "keystore_pass",
    "keystore_type",
    "certificate_file",
    "private_key_file",
    "model_url_pattern",
    "load_on_devices",
    "plugin_folder",
    "chunked_read_timeout",
    "error_rate_wlm",
    "error_rate_server",
    "error_rate_model",
    "error_rate_any",
    "bad_request_http_code",
    "wlm_error_http_code",
    "throttle_error_http_code",
    "timeout_http_code",
    "server_error_http_code",
    "request_id_header_key",
    "use_native_io",
    "io_ratio",
    "debug",
}
_ENTRY = re.compile(r"^(\[?([^?=\]]+?)]?=)?(.+)$")  # DJL's "[name]=url", "name=url" or "url"


def _address(value: str) -> dict[str, str]:
    parsed = urlparse(value if "://" in value else f"http://{value}")
    if parsed.scheme == "https":
        raise ConfigError(
            f"{value}: loraserve serves plain HTTP; terminate TLS in front of it "
            "(a load balancer or proxy) and use an http:// address"
        )
    found = {"host": parsed.hostname} if parsed.hostname else {}
    return found | ({"port": str(parsed.port)} if parsed.port else {})


def _model_entries(value: str) -> list[str]:
    """``load_models`` items → ``NAME=URL`` specs (the name DJL would infer when none given)."""
    specs = []
    for item in re.split(r"[, ]+", value.strip()):
        if not item or item.upper() in ("ALL", "NONE"):
            continue  # ALL: the model store, which loraserve always loads
        match = _ENTRY.match(item)
        assert match is not None  # the pattern matches any non-empty item
        endpoint, url = match.group(2), match.group(3)
        name = (
            endpoint.split(":")[0]
            if endpoint
            else archive_stem(PurePosixPath(urlparse(url).path.rstrip("/")).name)
        )
        specs.append(f"{name}={url}")
    return specs


def from_djl_config(props: dict[str, str]) -> dict[str, str]:
    """Settings from a properties file that may use DJL's keys; loraserve's own pass through."""
    settings: dict[str, str] = {}
    for key, value in props.items():
        if key == "inference_address":
            settings.update(_address(value))
        elif key == "management_address":
            if props.get("inference_address") not in (None, value):
                log.warning(
                    "management_address %s ignored: inference and management share inference_address here",
                    value,
                )
        elif key == "load_models":
            models = _model_entries(value)
            if models:
                settings["models"] = " ".join(models)
        elif key == "max_request_size":
            settings["max_request_bytes"] = value
        elif key == "model_store" and not Path(value).expanduser().is_dir():
            log.warning("model_store %s does not exist; no model store is used", value)
        elif key in DJL_IGNORED:
            log.warning("DJL setting %s has no loraserve equivalent; ignored", key)
        else:
            settings[key] = value
    return settings
