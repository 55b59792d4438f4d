"""Shared lookups for route modules: the model manager on ``app.state``."""

from __future__ import annotations

from fastapi import Request

from loraserve.config import ServerConfig
from loraserve.serving.model_manager import ModelManager


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def config_of(request: Request) -> ServerConfig:
    return request.app.state.config
