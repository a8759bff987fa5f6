"""``inference.GRPCInferenceService``, the Open Inference Protocol over gRPC, as
``tritonclient.grpc`` and KServe's ``InferenceGRPCClient`` call it; the RPCs it does not serve
(shared memory, trace and log settings) answer UNIMPLEMENTED.

Inference (``ModelInfer``, and each message of ``ModelStreamInfer``) is served by the request
pipeline (``batchserve/pipeline.py``) through ``GrpcAdapter``, with REST's admission, limits,
deadlines, batching, metrics and errors. Its message arrives serialized, as a body does: the
model it names is read first (``tensors.model_name``), then the pipeline decodes it (off the
event loop when large). The call's gRPC deadline is the request's ``X-Request-Timeout-Ms``
(the model's ``timeout_ms`` caps it); a cancelled call abandons its queued rows. The other RPCs
answer from the same state as their REST routes (``v2/routes.py``, ``routes.py``,
``management.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

import batchserve
from batchserve.errors import BatchserveError, MalformedRequest, ManagementDisabled
from batchserve.grpc_api import inference_pb2 as pb
from batchserve.grpc_api.adapter import GrpcAdapter, GrpcAnswer, status
from batchserve.grpc_api.tensors import model_target
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Call
from batchserve.management import authorize, load_model, repository_index, unload_model
from batchserve.metrics_multiprocess import read_metrics
from batchserve.pipeline import Pipeline
from batchserve.registry import ServedModel
from batchserve.routes import readiness
from batchserve.v2.model_config import model_config
from batchserve.v2.routes import VERSION, lookup_version, platform, tensors, versions_of
from batchserve.v2.stats import model_stats

SERVICE = "inference.GRPCInferenceService"
_INFER_PATH = f"/{SERVICE}/ModelInfer"
_STREAM_PATH = f"/{SERVICE}/ModelStreamInfer"
STREAM_IN_FLIGHT = 64
"""Requests of one ``ModelStreamInfer`` call served at once (their rows batch together); the
stream's next message is read once one of them is answered."""
_TRAILER_RETRY = "retry-after"
"""Trailing metadata of an UNAVAILABLE answer: seconds after which to retry (REST's Retry-After)."""

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class InferenceService:
    """The service's handlers over one app's pipeline; ``in_flight``: the calls being served
    (their tasks), for the drain, at most ``limit`` at once (``limit_concurrency``)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.state = pipeline.state
        self.adapter = GrpcAdapter(self.state.settings.max_items)
        self.limit = self.state.settings.limit_concurrency
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.readers: set[asyncio.Task[None]] = set()
        """The tasks reading the open streams' requests."""

    def drain(self) -> None:
        """Read no more requests from the open streams: each ends once the requests it sent are
        answered (an idle stream at once), rather than hold the drain for its whole grace."""
        for reader in self.readers:
            reader.cancel()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving the service's RPCs (inference takes raw bytes)."""
        unary = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest),
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._answering(method), request_deserializer=message.FromString,
                response_serializer=_serialize)
            for name, (method, message) in unary.items()}
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(self.model_infer)
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.model_stream_infer)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _answering(self, method: Callable[[Any, Context], Awaitable[Message]]
                   ) -> Callable[[Any, Context], Awaitable[Message]]:
        """``method``, its ``BatchserveError`` answered as the matching gRPC status."""
        async def answer(request: Any, context: Context) -> Message:
            try:
                return await method(request, context)
            except BatchserveError as exc:
                await _abort(context, status(exc.status, exc.type), exc.message, exc.headers)
                raise AssertionError("abort raises") from None
        return answer

    # ---- inference

    async def model_infer(self, body: bytes, context: Context) -> bytes:
        answer = await self._serve(body, context, _INFER_PATH)
        if answer.status_code != 200:
            await _abort(context, status(answer.status_code, answer.kind), answer.message,
                         answer.headers_sent)
        return answer.payload

    async def model_stream_infer(self, messages: AsyncIterator[bytes],
                                 context: Context) -> AsyncIterator[bytes]:
        """Each message answered on the stream as it completes (an error as ``error_message``,
        the stream going on); at most ``STREAM_IN_FLIGHT`` of them served at once. Each request's
        deadline is what is left of the stream's."""
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        serving: set[asyncio.Task[None]] = set()

        async def serve_one(body: bytes) -> None:
            try:
                answer = await self._serve(body, context, _STREAM_PATH)
                answers.put_nowait(_stream_answer(answer, body))
            finally:
                slots.release()

        async def read_all() -> None:
            try:
                with contextlib.suppress(asyncio.CancelledError):  # the drain: read no more requests
                    async for body in messages:
                        await slots.acquire()
                        task = asyncio.create_task(serve_one(body))
                        serving.add(task)
                        task.add_done_callback(serving.discard)
                while serving:  # the requests read are answered
                    await asyncio.wait(set(serving))
            finally:
                answers.put_nowait(None)  # the end of the answers, whether the stream ended or broke

        reader = asyncio.create_task(read_all())
        self.readers.add(reader)
        reader.add_done_callback(self.readers.discard)
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # its error, if the stream broke
        finally:  # the call ended or was cancelled: its queued rows are abandoned
            for task in (reader, *serving):
                task.cancel()

    async def _serve(self, body: bytes, context: Context, path: str) -> GrpcAnswer:
        """One inference request through the pipeline; its answer, whatever the outcome."""
        task = asyncio.current_task()
        assert task is not None
        headers = _headers(context, len(body))
        if len(self.in_flight) >= self.limit:
            return GrpcAnswer(b"the server is serving its limit of requests (BATCHSERVE_LIMIT_CONCURRENCY)",
                              status_code=503, headers={"Retry-After": "1"})
        self.in_flight.add(task)
        try:
            try:
                name, version = model_target(body)
            except BatchserveError as exc:
                return _answer(Call(self.adapter, None, headers, method="POST", path=path,
                                    query=b"").failed(exc))
            call = Call(self.adapter, name, headers, method="POST", path=path, query=b"",
                        version=version or None)
            return _answer(await self.pipeline.run(call, lambda: _once(body), _disconnected(context),
                                                   lambda: _whole(body)))
        finally:
            self.in_flight.discard(task)

    # ---- health and metadata

    async def server_live(self, request: Any, context: Context) -> Message:
        return pb.ServerLiveResponse(live=not self.state.registry.broken())

    async def server_ready(self, request: Any, context: Context) -> Message:
        return pb.ServerReadyResponse(ready=readiness(self.state)[0])

    async def model_ready(self, request: Any, context: Context) -> Message:
        model = self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=model.ready and not self.state.draining)

    async def server_metadata(self, request: Any, context: Context) -> Message:
        return pb.ServerMetadataResponse(name="batchserve", version=batchserve.__version__,
                                         extensions=["model_configuration", "statistics",
                                                     "model_repository"])

    async def model_metadata(self, request: Any, context: Context) -> Message:
        model = self._model(request.name, request.version)
        metadata = tensors(model)
        return pb.ModelMetadataResponse(
            name=model.config.name, versions=versions_of(self.state, model.config.name),
            platform=platform(model),
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]])

    async def model_config(self, request: Any, context: Context) -> Message:
        model = self._model(request.name, request.version)
        config = json_format.ParseDict(model_config(model, tensors(model), platform(model)), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def model_statistics(self, request: Any, context: Context) -> Message:
        metrics = await read_metrics(self.state)
        if request.name:  # as REST's: one version's, or (none named) all of the model's together
            version = request.version or None
            model = self._model(request.name, request.version)
            shown = VERSION if version is None else model.config.version or VERSION
            stats = model_stats(metrics, [model.config.name], shown,
                                version if model.config.version else None)
        else:
            names = list(dict.fromkeys(m.config.name for m in self.state.registry))  # once a model
            stats = model_stats(metrics, names, VERSION)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    def _model(self, name: str, version: str) -> ServedModel:
        """``name``'s ``version`` (``""``: its latest), as REST's metadata routes look it up."""
        return lookup_version(self.state, name, version or None)

    # ---- the model repository (management: the bearer token in the call's metadata)

    def _authorize(self, context: Context) -> None:
        """As REST's management routes: the bearer token from the call's ``authorization``
        metadata; and none at all where ``--management-port`` keeps management to its own port."""
        if self.state.settings.management_port is not None:
            raise ManagementDisabled("the model repository is managed on the management port only "
                                     "(BATCHSERVE_MANAGEMENT_PORT), not over gRPC")
        authorize(self.state, _metadata(context, "authorization"))

    async def repository_index(self, request: Any, context: Context) -> Message:
        self._authorize(context)
        index = await repository_index(self.state)
        models = [pb.RepositoryIndexResponse.ModelIndex(
            name=m["name"], version=m["version"], state=m["state"], reason=m["reason"] or "")
            for m in index if not request.ready or m["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=models)

    async def repository_load(self, request: Any, context: Context) -> Message:
        self._authorize(context)
        if request.parameters:
            raise MalformedRequest("a load takes no parameters: models load from the repository file")
        await load_model(self.state, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Context) -> Message:
        self._authorize(context)
        await unload_model(self.state, request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _metadata(context: Context, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


def _headers(context: Context, size: int) -> RequestHeaders:
    """The headers the pipeline reads, from the call: its size as the body's length, its gRPC
    deadline (or its ``x-request-timeout-ms`` metadata) as the request's timeout, and the trace
    context from its metadata."""
    found: dict[str, str] = {"content-length": str(size)}
    for name, value in context.invocation_metadata() or ():
        if name in ("x-request-timeout-ms", "x-routing-key", "traceparent", "tracestate") \
                and isinstance(value, str):
            found[name] = value
    remaining_s = context.time_remaining()
    if remaining_s is not None:  # a deadline already passed is one that ends at once
        deadline_ms = max(remaining_s * 1000.0, 1e-3)
        if not _shorter(found.get("x-request-timeout-ms"), deadline_ms):
            found["x-request-timeout-ms"] = f"{deadline_ms:.3f}"
    return RequestHeaders.from_lookup(found.get)


def _shorter(sent: str | None, deadline_ms: float) -> bool:
    """Whether the metadata's ``x-request-timeout-ms`` is a timeout shorter than the deadline's."""
    try:
        return sent is not None and 0 < float(sent) < deadline_ms
    except ValueError:
        return False


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _whole(body: bytes) -> bytes:
    return body


def _disconnected(context: Context) -> Callable[[], Awaitable[object]]:
    """What makes an awaitable that completes once the call is over (cancelled by its client)."""
    def watch() -> Awaitable[object]:
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: Context) -> None:
            if not ended.done():
                ended.set_result(None)

        context.add_done_callback(done)  # type: ignore[arg-type]  # types-grpcio: a class, not a Protocol
        return ended
    return watch


def _answer(response: Any) -> GrpcAnswer:
    assert isinstance(response, GrpcAnswer)  # GrpcAdapter answers every outcome with one
    return response


def _stream_answer(answer: GrpcAnswer, body: bytes) -> bytes:
    """A ``ModelStreamInferResponse``: the serialized response wrapped as its field 2 without
    parsing it again, or the error message with the request's id."""
    if answer.status_code == 200:
        return b"\x12" + _varint(len(answer.payload)) + answer.payload
    request_id = ""
    with contextlib.suppress(DecodeError):
        request_id = pb.ModelInferRequest.FromString(body).id if len(body) < 65536 else ""
    error = pb.ModelStreamInferResponse(error_message=answer.message,
                                        infer_response=pb.ModelInferResponse(id=request_id))
    serialized: bytes = error.SerializeToString()
    return serialized


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def _abort(context: Context, code: grpc.StatusCode, message: str, headers: dict[str, str]) -> None:
    """End the call with ``code`` and ``message``; an UNAVAILABLE one carries its retry delay in
    the trailing metadata (``retry-after``, seconds)."""
    retry = headers.get("Retry-After")
    if retry is not None:
        context.set_trailing_metadata(((_TRAILER_RETRY, retry),))
    await context.abort(code, message)

