"""The Open Inference Protocol's ``ModelInfer`` over gRPC, an adapter over the request's
lifecycle (``batchserve/lifecycle.py``) like REST's: the serialized ``ModelInferRequest`` is the
body, its tensors become items through the model's v2 codec (``batchserve/v2/codec.py``), and
the answer is the serialized ``ModelInferResponse``, or an error that ``status_code`` maps to the
gRPC status clients expect (``STATUS_CODES``)."""

from __future__ import annotations

from typing import Any

import grpc
from starlette.responses import Response

from batchserve.errors import BatchserveError, MalformedRequest
from batchserve.grpc_api.tensors import GrpcInferRequest, encode_response, parse_request
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Adapter, Call, Decoded
from batchserve.registry import ServedModel
from batchserve.v2.codec import codec_for
from batchserve.v2.routes import V2_OFFLOAD_BYTES, VERSION

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT, 499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The gRPC status of each HTTP status a ``BatchserveError`` carries; any other is INTERNAL. Too
many items is INVALID_ARGUMENT (Triton's answer to a batch past its limit); a body past the size
limit is RESOURCE_EXHAUSTED, as gRPC's own message limit answers (``status``)."""


def status(http_status: int, kind: str) -> grpc.StatusCode:
    """The gRPC status for an error of ``http_status`` and type ``kind``."""
    if kind == "body_too_large":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


class GrpcAnswer(Response):
    """An answer on gRPC: a serialized message (``status_code`` 200), or an error's HTTP status,
    type, message and headers (``Retry-After``), for the service to turn into a gRPC status."""

    def __init__(self, body: bytes, *, status_code: int = 200, kind: str = "",
                 headers: dict[str, str] | None = None) -> None:  # no super().__init__(): unused
        self.status_code = status_code
        self.body = self.payload = body
        self.kind = kind
        self.headers_sent = headers or {}
        self.background = None
        self.raw_headers = []

    @property
    def message(self) -> str:
        return self.payload.decode()


class GrpcAdapter(Adapter):
    """``ModelInfer``: tensors in, tensors out, through the model's v2 codec."""

    protocol = "grpc"

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items

    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        return size <= V2_OFFLOAD_BYTES  # as REST's: decoding grows with the tensors

    def decode(self, body: bytes, call: Call) -> Decoded:
        model = call.model
        assert model is not None  # looked up from the message's model_name (service.py)
        decoded = parse_request(body, max_items=self.max_items)
        if decoded.model != model.config.name:  # field 1 sent twice: protobuf keeps the last
            raise MalformedRequest(f"model_name is sent more than once ({decoded.model!r:.80} last)")
        if decoded.version != (call.version or ""):  # field 2 sent twice: the last is kept
            raise MalformedRequest(f"model_version is sent more than once ({decoded.version!r:.20} last)")
        codec = codec_for(model.backend)
        inputs = decoded.request.inputs
        codec.check_names(model.backend, inputs)
        return Decoded(codec.items(model.backend, inputs), decoded.request.parameters, context=decoded)

    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        request: GrpcInferRequest = decoded.context
        tensors = codec_for(model.backend).outputs(model.backend, outputs)
        return GrpcAnswer(encode_response(model.config.name, model.config.version or VERSION,
                                          request.request, tensors))

    def error(self, exc: BatchserveError) -> Response:
        return GrpcAnswer(exc.message.encode(), status_code=exc.status, kind=exc.type,
                          headers=exc.headers)
