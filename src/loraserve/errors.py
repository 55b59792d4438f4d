"""Typed errors of loraserve, each carrying the HTTP status and DJL error type it maps to."""

from __future__ import annotations


class LoraserveError(Exception):
    """Base of every error the server turns into a JSON response; never a stack trace."""

    status_code: int = 500
    error_type: str = "InternalServerException"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def to_json(self) -> dict[str, object]:
        """DJL's error body: ``{"code", "type", "message"}``."""
        return {"code": self.status_code, "type": self.error_type, "message": self.message}


class BadRequestError(LoraserveError):
    status_code = 400
    error_type = "BadRequestException"


class ForbiddenError(LoraserveError):
    status_code = 403
    error_type = "ForbiddenException"


class ModelNotFoundError(LoraserveError):
    status_code = 404
    error_type = "ModelNotFoundException"


class AdapterNotFoundError(LoraserveError):
    status_code = 404
    error_type = "AdapterNotFoundException"


class ConflictError(LoraserveError):
    status_code = 409
    error_type = "ConflictException"


class PayloadTooLargeError(LoraserveError):
    status_code = 413
    error_type = "PayloadTooLargeException"


class ServiceUnavailableError(LoraserveError):
    status_code = 503
    error_type = "ServiceUnavailableException"


class WorkerDiedError(LoraserveError):
    """The worker process serving a request exited before answering it."""

    status_code = 503
    error_type = "WorkerDiedException"


class HandlerError(LoraserveError):
    """The user's handler raised or returned an error output."""

    status_code = 424
    error_type = "PredictionException"


class ConfigError(LoraserveError):
    """A setting (flag, env var, serving.properties) has a value we cannot use."""

    status_code = 400
    error_type = "ConfigException"


class InsufficientStorageError(LoraserveError):
    """The server's state could not be made durable (disk full, I/O error): nothing changed."""

    status_code = 507
    error_type = "InsufficientStorageException"
