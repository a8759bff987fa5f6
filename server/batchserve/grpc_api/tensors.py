"""Open Inference Protocol tensors over gRPC: a ``ModelInferRequest`` to v2 ``Tensor``s, and
output tensors to a ``ModelInferResponse``, with the REST codec's checks (``v2/tensors.py``).

A request's tensor data comes either in ``raw_input_contents`` (one entry per input, in the
inputs' order: little-endian values, BYTES as tritonclient's 4-byte length-prefixed elements)
or in each input's typed ``contents`` field, never both. Every shape is checked
(``check_shape``) before anything is built from it. A request that sent raw inputs is answered
with ``raw_output_contents``, one that sent typed contents with typed contents, as Triton does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from batchserve.errors import InvalidInput, MalformedRequest
from batchserve.grpc_api import inference_pb2 as pb
from batchserve.v2.tensors import (
    DATATYPES,
    MAX_DIMS,
    MAX_TENSORS,
    NUMPY_TYPES,
    PROTOCOL_PARAMETERS,
    InferRequest,
    Tensor,
    check_shape,
    from_binary,
    requested,
    shown,
    to_binary,
)

CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
            "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
"""The ``InferTensorContents`` field of each datatype (FP16 has none: raw only)."""
_NARROW = {"UINT8", "UINT16", "INT8", "INT16"}
"""Datatypes whose typed contents travel in a wider field: their range is checked."""


@dataclass(slots=True)
class GrpcInferRequest:
    """A decoded ``ModelInferRequest``: the v2 request (``binary_output``: answer in
    ``raw_output_contents``), and the model and version it names."""

    request: InferRequest
    model: str
    version: str


def model_target(body: bytes) -> tuple[str, str]:
    """The model and version a serialized ``ModelInferRequest`` names (``""``: none), read before
    it is decoded (so the model is looked up, and its deadline fixed, first): ``model_name`` and
    ``model_version`` are fields 1 and 2, which protobuf's serializers write first and in that
    order; in any other order the message is parsed for them."""
    if body[:1] == b"\n":  # field 1, length-delimited
        length, start = _varint(body, 1)
        if length is not None and start + length <= len(body):
            try:
                name = body[start:start + length].decode()
            except UnicodeDecodeError:
                name = None
            after = start + length
            if name is not None and body[after:after + 1] != b"\x12":  # no field 2 next
                return name, ""
            if name is not None:
                size, begin = _varint(body, after + 1)
                if size is not None and begin + size <= len(body):
                    with contextlib.suppress(UnicodeDecodeError):
                        return name, body[begin:begin + size].decode()
    message = _parse(body)
    return message.model_name, message.model_version


def _varint(data: bytes, position: int) -> tuple[int | None, int]:
    value = shift = 0
    for index in range(position, min(position + 5, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return None, position


def _parse(body: bytes) -> Any:
    try:
        return pb.ModelInferRequest.FromString(body)
    except DecodeError as exc:
        raise MalformedRequest(f"the message is not a ModelInferRequest: {exc}") from None


def parse_request(body: bytes, *, max_items: int) -> GrpcInferRequest:
    """Decode a serialized ``ModelInferRequest``: 422 (INVALID_ARGUMENT) for a malformed one, 400
    for bad tensor contents, 413 for a first dimension above ``max_items``; each error names the
    input."""
    message = _parse(body)
    inputs = message.inputs
    if not inputs:
        raise MalformedRequest("the request has no inputs")
    if len(inputs) > MAX_TENSORS:
        raise MalformedRequest(f"the request has {len(inputs)} inputs; at most {MAX_TENSORS}")
    if len(message.outputs) > MAX_TENSORS:
        raise MalformedRequest(f"the request asks for {len(message.outputs)} outputs; at most {MAX_TENSORS}")
    raw = message.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send "
                           "one per input, in the inputs' order, or none")
    tensors: dict[str, Tensor] = {}
    for index, spec in enumerate(inputs):
        tensor = _input(spec, raw[index] if raw else None, max_items)
        if tensor.name in tensors:
            raise MalformedRequest(f"input {shown(tensor.name)} appears twice")
        tensors[tensor.name] = tensor
    outputs = {o.name: True for o in message.outputs} if message.outputs else None
    parameters = {key: _parameter(value) for key, value in message.parameters.items()
                  if key not in PROTOCOL_PARAMETERS}
    request = InferRequest(inputs=tensors, request_id=message.id or None, parameters=parameters,
                           outputs=outputs, binary_output=bool(raw))
    return GrpcInferRequest(request, message.model_name, message.model_version)


def _input(spec: Any, raw: bytes | None, max_items: int) -> Tensor:
    label = shown(spec.name)
    datatype = spec.datatype
    if datatype not in DATATYPES:
        raise MalformedRequest(f"input {label}: datatype must be one of {list(DATATYPES)}, "
                               f"not {datatype[:20]!r}")
    if len(spec.shape) > MAX_DIMS:  # before the dimensions become a list
        raise MalformedRequest(f"input {label}: shape must be a list of 1 to {MAX_DIMS} "
                               f"non-negative integers; it has {len(spec.shape)} dimensions")
    shape, count = check_shape(list(spec.shape), label, max_items)
    if raw is not None:
        if spec.HasField("contents"):
            raise InvalidInput(f"input {label}: tensor data both in contents and in raw_input_contents")
        return Tensor(spec.name, datatype, from_binary(memoryview(raw), datatype, shape, count, label))
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input {label}: {datatype} data must be sent in raw_input_contents")
    contents = spec.contents
    sent = [f.name for f, _ in contents.ListFields()]
    if sent and sent != [field]:
        raise InvalidInput(f"input {label}: a {datatype} tensor takes its data in contents.{field}, "
                           f"not {', '.join(sent)}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {label}: {len(values)} elements in contents.{field} for shape {shape}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return Tensor(spec.name, datatype, array.reshape(shape))
    dtype = NUMPY_TYPES[datatype]
    if datatype in _NARROW:
        wide = np.asarray(values, dtype=np.int64)
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidInput(f"input {label}: a value does not fit {datatype}")
        return Tensor(spec.name, datatype, wide.astype(dtype).reshape(shape))
    return Tensor(spec.name, datatype, np.asarray(values, dtype=dtype).reshape(shape))


def _parameter(value: Any) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def encode_response(model: str, version: str, request: InferRequest, tensors: list[Tensor]) -> bytes:
    """The serialized ``ModelInferResponse`` of ``model``'s ``version``: the requested outputs
    (every one when none were named; 400 for a name the model has not), raw when the request's
    inputs were."""
    tensors = requested(request, tensors)
    raw = request.binary_output or any(t.datatype not in CONTENTS for t in tensors)
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.request_id or "")
    for tensor in tensors:
        output = response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                      shape=tensor.array.shape)
        if raw:
            response.raw_output_contents.append(to_binary(tensor))
        else:
            getattr(output.contents, CONTENTS[tensor.datatype]).extend(tensor.array.reshape(-1).tolist())
    serialized: bytes = response.SerializeToString()
    return serialized
