"""Errors that carry their HTTP status; one handler in ``app.py`` renders them all."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class BatchserveError(Exception):
    """Base error: ``status`` and ``type`` become the JSON error body."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(BatchserveError):
    """An item (or a parameter) the backend cannot accept; the message names which."""

    status = 400
    type = "invalid_input"


class ModelNotFound(BatchserveError):
    status = 404
    type = "model_not_found"


class ModelVersionNotFound(BatchserveError):
    status = 404
    type = "model_version_not_found"


class Unauthorized(BatchserveError):
    """401 from the management API: the bearer token is missing or wrong."""

    status = 401
    type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ManagementDisabled(BatchserveError):
    status = 403
    type = "management_disabled"


class LoadFailed(BatchserveError):
    """409 from the management API: the model failed to load; the old version still serves."""

    status = 409
    type = "load_failed"


class RequestTimeout(BatchserveError):
    """408: the request body was not complete by the request's deadline."""

    status = 408
    type = "request_timeout"


class BodyTooLarge(BatchserveError):
    status = 413
    type = "body_too_large"


class TooManyItems(BatchserveError):
    status = 413
    type = "too_many_items"


class UnsupportedMediaType(BatchserveError):
    status = 415
    type = "unsupported_media_type"


class MalformedRequest(BatchserveError):
    status = 422
    type = "malformed_request"


class Unavailable(BatchserveError):
    """503: the client may retry after ``retry_after_s`` seconds."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(Unavailable):
    type = "queue_full"


class Overloaded(Unavailable):
    """The rows queued ahead would not let this request start before its deadline at the
    model's recent rate; ``Retry-After`` says when they would."""

    type = "overloaded"


class BodyBudgetFull(Unavailable):
    """503: the bodies being read hold the server's whole budget of body bytes; refused unread."""

    type = "body_budget_full"


class ShuttingDown(Unavailable):
    type = "shutting_down"


class ModelNotReady(Unavailable):
    type = "model_not_ready"


class DeadlineExceeded(BatchserveError):
    status = 504
    type = "deadline_exceeded"


class ClientDisconnected(BatchserveError):
    """The client went away while its rows were queued (nginx's 499)."""

    status = 499
    type = "client_disconnected"


class BackendError(BatchserveError):
    """The model failed on a row for a reason that is not the client's input."""

    status = 500
    type = "backend_error"


class BackendContractError(BackendError):
    """The backend broke the contract (e.g. returned the wrong number of outputs)."""

    type = "backend_contract_error"


@dataclass(frozen=True, slots=True)
class RowError:
    """What ``predict_batch`` returns in place of a row's output when that row alone failed
    (a non-finite prediction, an undecodable text): a value, not an exception, so the rest of
    the batch is answered and nothing is bisected. The row's request gets ``error``."""

    error: BatchserveError


def describe_validation_errors(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> str:
    """pydantic's (and FastAPI's) validation errors as one line: ``field 'a.b': message; ...``,
    each field's path after ``prefix``; ``(table)`` where the error is the whole object's."""
    return "; ".join(f"field '{prefix}{'.'.join(str(p) for p in error['loc']) or '(table)'}': "
                     f"{error['msg']}" for error in errors)

