"""Scale-out on Ray Serve: loraserve's engine as replicas, one ingress with loraserve's APIs,
adapter-affinity routing through Ray Serve's model multiplexing. Needs the ``ray`` extra."""

from __future__ import annotations


def require_ray() -> None:
    """Fail with the install command, not an ImportError from deep inside, when Ray is absent."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        from loraserve.errors import ConfigError

        raise ConfigError("Ray Serve is not installed: pip install 'loraserve[ray]'") from None
