"""Request and response shapes, for the OpenAPI document.

``/predict`` parses its body with orjson rather than through these models (the
framework's per-request validation costs more than the model on small inputs;
see benchmarks/README.md); ``batchserve/predict.py`` enforces the same shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model name (omitted on /predict/{model}).")
    inputs: list[Any] = Field(min_length=1, description="Items; one output is returned per item.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Backend parameters.")


class PredictResponse(BaseModel):
    model: str
    outputs: list[Any]


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. invalid_input, queue_full.")
    message: str = Field(description="What was wrong, naming the item or field.")


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "An item is invalid; the message names its index."},
    404: {"model": ErrorBody, "description": "Unknown model; the message lists the known ones."},
    413: {"model": ErrorBody, "description": "Request body too large, or too many items."},
    415: {"model": ErrorBody, "description": "Body type not accepted by this model."},
    422: {"model": ErrorBody, "description": "Malformed request (not JSON, wrong shape)."},
    503: {"model": ErrorBody, "description": "Queue full, model not ready or shutting down; "
                                             "see Retry-After."},
    504: {"model": ErrorBody, "description": "Deadline passed before the rows ran."},
}
