"""The Ray Serve application: engine replicas (with their resources and replica count or
autoscaling) bound under the ingress. ``serve run loraserve.ray_serve.app:build`` also works."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from loraserve.ray_serve.config import RayAppConfig
from loraserve.ray_serve.ingress import Ingress
from loraserve.ray_serve.replica import EngineReplica

ENGINE_DEPLOYMENT = "LoraserveEngine"
INGRESS_DEPLOYMENT = "LoraserveIngress"


def build_app(config: RayAppConfig) -> Application:
    engine = serve.deployment(name=ENGINE_DEPLOYMENT)(EngineReplica).options(
        **config.replica_deployment_options()
    )
    ingress = serve.deployment(name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0})(
        serve.ingress()(Ingress)
    )
    return ingress.bind(engine.bind(config), config)


def build(args: dict[str, Any]) -> Application:
    """``serve run`` builder: the config file's ``args`` are ``RayAppConfig`` fields."""
    return build_app(RayAppConfig(**args))
