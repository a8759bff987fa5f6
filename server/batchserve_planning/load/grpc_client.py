"""The load generator over gRPC (``loadtest --protocol grpc``): requests as serialized
``ModelInferRequest`` messages, sent the way tritonclient.grpc sends them (tensor data in
``raw_input_contents``), and a connection with the HTTP one's interface (``client.Connection``).

Each connection is a channel of its own (its own HTTP/2 connection, so that with worker
processes the kernel spreads them as it does HTTP's) carrying one call at a time. A call's
gRPC status is recorded as the HTTP status REST answers for the same outcome
(``HTTP_STATUS``), so reports read the same for both protocols. gRPC is imported when a run
asks for it (the ``grpc`` extra), never at import.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from batchserve_planning.load.client import ERROR_BODY_BYTES, STATUS_CONNECTION_ERROR, STATUS_TIMEOUT, Done
from batchserve_planning.load.inputs import InputError, Requests, Sample

INFER = "/inference.GRPCInferenceService/ModelInfer"
HTTP_STATUS = {"OK": 200, "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
               "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413, "FAILED_PRECONDITION": 409,
               "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500}
"""A gRPC status (by name) as REST's status for the same outcome; any other is 500."""
_NUMPY = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2",
          "INT8": "<i1", "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "<u1", "BOOL": "?"}


class GrpcConnection:
    """One channel carrying one ModelInfer call at a time; ``on_done`` as ``client.Connection``'s."""

    def __init__(self, target: str, on_done: Done) -> None:
        import grpc.aio

        self._on_done = on_done
        self._channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1)])
        self._infer: Any = self._channel.unary_unary(INFER)  # bytes in, bytes out
        self._call: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self.busy = False
        self.sent_at = 0.0
        self.intended_at = 0.0
        self.closed = False

    async def ready(self) -> None:
        await self._channel.channel_ready()

    def send(self, request: bytes, sent_at: float, intended_at: float) -> None:
        assert not self.busy
        self.busy = True
        self.sent_at = sent_at
        self.intended_at = intended_at
        self._call = asyncio.ensure_future(self._run(request))

    async def _run(self, request: bytes) -> None:
        import grpc.aio

        try:
            await self._infer(request)
        except grpc.aio.AioRpcError as exc:
            status = HTTP_STATUS.get(exc.code().name, 500)
            self._finish(status, (exc.details() or "").encode()[:ERROR_BODY_BYTES])
            return
        except asyncio.CancelledError:
            return  # timed out (``timeout``) or closed: already reported
        self._finish(200, b"")

    def timeout(self) -> None:
        """Give up on the call in flight: reported as a timeout (the connection stays open)."""
        if self._call is not None:
            self._call.cancel()
        if self.busy:
            self._finish(STATUS_TIMEOUT, b"no response within the timeout")

    def close(self) -> None:
        self.closed = True
        if self._call is not None:
            self._call.cancel()
        if self.busy:
            self._finish(STATUS_CONNECTION_ERROR, b"connection closed before the response")
        self._closing = asyncio.ensure_future(self._channel.close())

    def _finish(self, status: int, body: bytes) -> None:
        self.busy = False
        self._on_done(self, status, body)  # type: ignore[arg-type]  # the same interface


async def grpc_connect(host: str, port: int, on_done: Done) -> GrpcConnection:
    connection = GrpcConnection(f"{host}:{port}", on_done)
    await connection.ready()
    return connection


def build_grpc_requests(samples: list[Sample], metadata: dict[str, Any], *, model: str, port: int,
                        version: str = "", rows_per_request: int = 1,
                        parameters: dict[str, Any] | None = None) -> Requests:
    """Serialized ``ModelInferRequest``s of ``rows_per_request`` samples each, to the one input
    tensor the model's v2 ``metadata`` declares: numbers as its datatype, text and images as
    BYTES (images as their raw bytes), all in ``raw_input_contents``. Encoded here (the load
    client imports nothing of the server): protobuf's wire format for the few fields sent.
    ``port``: the server's gRPC port; ``version``: the model's version to ask for
    (``model_version``); none: as routed."""
    import numpy as np

    from batchserve_planning.load.inputs import MAX_REQUESTS

    if rows_per_request < 1:
        raise InputError("rows per request must be at least 1")
    inputs = metadata.get("inputs") or []
    if len(inputs) != 1:
        raise InputError(f"--protocol grpc sends one input tensor; model {model!r} declares {len(inputs)}")
    name, datatype = inputs[0]["name"], inputs[0]["datatype"]
    items = [s.item for s in samples]
    encoded = b"".join(_field(4, _field(1, key.encode()) + _field(2, _parameter(value)))
                       for key, value in (parameters or {}).items())
    requests: list[bytes] = []
    for index in range(min(MAX_REQUESTS, max(1, -(-len(items) // rows_per_request)))):
        rows = [items[(index * rows_per_request + j) % len(items)] for j in range(rows_per_request)]
        if datatype == "BYTES":
            elements = [r if isinstance(r, bytes) else str(r).encode() for r in rows]
            raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
            shape = [len(rows)]
        elif datatype in _NUMPY:
            array = np.asarray(rows, dtype=_NUMPY[datatype])
            raw, shape = array.tobytes(), list(array.shape)
        else:
            raise InputError(f"model {model!r} takes {datatype} tensors, which --protocol grpc can't build")
        tensor = (_field(1, name.encode()) + _field(2, datatype.encode())
                  + _field(3, b"".join(_varint(d) for d in shape)))
        named = _field(1, model.encode()) + (_field(2, version.encode()) if version else b"")
        requests.append(named + encoded + _field(5, tensor) + _field(7, raw))
    return Requests(tuple(requests), rows_per_request,
                    f"{len(samples)} samples, {rows_per_request} item(s) per request, over gRPC "
                    f"({name} {datatype} in raw_input_contents)", protocol="grpc", port=port)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes, a message, packed numbers)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _parameter(value: Any) -> bytes:
    """An ``InferParameter``: bool (field 1), int64 (2), string (3) or double (4)."""
    if isinstance(value, bool):
        return _varint(1 << 3) + _varint(int(value))
    if isinstance(value, int):
        return _varint(2 << 3) + _varint(value)
    if isinstance(value, float):
        return _varint(4 << 3 | 1) + struct.pack("<d", value)
    return _field(3, str(value).encode())
