"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data; the header
``Inference-Header-Content-Length`` then gives the JSON part's length and each input that
carries binary data says how many bytes (``parameters.binary_data_size``). BYTES elements in
binary form are a 4-byte little-endian length followed by the bytes.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from batchserve.errors import InvalidInput, MalformedRequest

HEADER_LENGTH = "inference-header-content-length"
MAX_ELEMENTS = 1 << 26
"""Most elements one tensor may declare (its shape's product); bodies are capped anyway."""

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
_PROTOCOL_PARAMETERS = {"binary_data_output", "binary_data", "binary_data_size", "timeout",
                        "priority", "sequence_id", "sequence_start", "sequence_end"}


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray[Any, Any]  # BYTES: an object array of bytes


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, Tensor]
    request_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    """Only the model's parameters: protocol ones (binary_data_output, ...) are taken out."""
    outputs: dict[str, bool] | None = None
    """Requested output name -> binary; ``None``: every output."""
    binary_output: bool = False


def parse_infer(body: bytes, header_length: bytes | None) -> InferRequest:
    """Decode an infer request; malformed ones raise 422, bad tensor contents 400."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest("Inference-Header-Content-Length must be a length within the body")
        json_part, binary = body[: int(header_length)], memoryview(body)[int(header_length):]
    else:
        json_part, binary = body, memoryview(b"")
    try:
        payload = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedRequest("request must be a JSON object")
    specs = payload.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise MalformedRequest("'inputs' must be a non-empty list of tensors")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("'parameters' must be an object")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest("'id' must be a string")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for index, spec in enumerate(specs):
        tensor, used = _input(spec, index, binary[offset:])
        offset += used
        if tensor.name in inputs:
            raise MalformedRequest(f"input {tensor.name!r} appears twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise MalformedRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return InferRequest(
        inputs=inputs, request_id=request_id,
        parameters={k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS},
        outputs=_requested_outputs(payload.get("outputs")),
        binary_output=parameters.get("binary_data_output") is True,
    )


def _input(spec: Any, index: int, binary: memoryview) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise MalformedRequest(f"inputs[{index}] must be an object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise MalformedRequest(f"inputs[{index}].name must be a string")
    if datatype not in DATATYPES:
        raise MalformedRequest(f"input {name!r}: datatype must be one of {list(DATATYPES)}")
    if (not isinstance(shape, list) or not shape
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise MalformedRequest(f"input {name!r}: shape must be a non-empty list of non-negative integers")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {shape} declares more than {MAX_ELEMENTS} elements")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or size > len(binary):
            raise MalformedRequest(f"input {name!r}: binary_data_size {size!r} exceeds the binary data")
        return Tensor(name, datatype, _from_binary(bytes(binary[:size]), datatype, shape, name)), size
    if "data" not in spec:
        raise MalformedRequest(f"input {name!r} has neither 'data' nor binary data")
    return Tensor(name, datatype, _from_json(spec["data"], datatype, shape, name)), 0


def _from_binary(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray[Any, Any]:
    count = math.prod(shape)
    if datatype == "BYTES":
        elements: list[bytes] = []
        position = 0
        while position < len(raw):
            if position + 4 > len(raw):
                raise InvalidInput(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, position)
            position += 4
            if position + length > len(raw):
                raise InvalidInput(f"input {name!r}: BYTES element runs past the data")
            elements.append(raw[position : position + length])
            position += length
        if len(elements) != count:
            raise InvalidInput(f"input {name!r}: {len(elements)} elements for shape {shape}")
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    dtype = NUMPY_TYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes for shape {shape} of {datatype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray[Any, Any]:
    flat = _flatten(data, len(shape), name)
    if len(flat) != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {len(flat)} elements for shape {shape}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"input {name!r}: BYTES elements must be strings in JSON")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() for v in flat]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input {name!r}: BOOL elements must be true or false")
    elif not all(type(v) in (int, float) for v in flat):
        raise InvalidInput(f"input {name!r}: {datatype} elements must be numbers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=NUMPY_TYPES[datatype])
    except (OverflowError, FloatingPointError, ValueError):
        raise InvalidInput(f"input {name!r}: a value does not fit {datatype}") from None
    return array.reshape(shape)


def _flatten(data: Any, depth: int, name: str) -> list[Any]:
    """Row-major elements of ``data``: a flat list, or lists nested ``depth`` deep."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    level = data
    for _ in range(depth - 1):
        if not all(isinstance(v, list) for v in level):
            raise InvalidInput(f"input {name!r}: 'data' is ragged")
        level = [v for sub in level for v in sub]
    flat = level
    if any(isinstance(v, list) for v in flat):
        raise InvalidInput(f"input {name!r}: 'data' is nested deeper than its shape")
    return flat


def _requested_outputs(specs: Any) -> dict[str, bool] | None:
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise MalformedRequest("'outputs' must be a list")
    requested: dict[str, bool] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise MalformedRequest(f"outputs[{index}] must be an object with a name")
        parameters = spec.get("parameters") or {}
        requested[spec["name"]] = isinstance(parameters, dict) and parameters.get("binary_data") is True
    return requested


def encode_response(model: str, request: InferRequest, tensors: list[Tensor]) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows it."""
    wanted = request.outputs
    if wanted is not None:
        unknown = sorted(set(wanted) - {t.name for t in tensors})
        if unknown:
            raise InvalidInput(f"unknown outputs {unknown}; this model has {[t.name for t in tensors]}")
        tensors = [t for t in tensors if t.name in wanted]
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.array.shape)}
        binary = request.binary_output if wanted is None else wanted[tensor.name]
        if binary:
            blob = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = tensor.array.reshape(-1)
            entry["data"] = ([v.decode("utf-8", "replace") for v in flat]
                             if tensor.datatype == "BYTES" else flat.tolist())
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.request_id is not None:
        header["id"] = request.request_id
    json_part = orjson.dumps(header)
    if not blobs:
        return json_part, None
    return json_part + b"".join(blobs), len(json_part)


def _to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.array.reshape(-1))
    return np.ascontiguousarray(tensor.array, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


def bytes_tensor(name: str, values: list[bytes] | list[str], shape: tuple[int, ...]) -> Tensor:
    """A BYTES tensor from Python strings or bytes."""
    array = np.empty(len(values), dtype=object)
    array[:] = [v.encode() if isinstance(v, str) else v for v in values]
    return Tensor(name, "BYTES", array.reshape(shape))


def numeric_datatype(array: np.ndarray[Any, Any]) -> str:
    for name, dtype in NUMPY_TYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no v2 datatype for {array.dtype}")
