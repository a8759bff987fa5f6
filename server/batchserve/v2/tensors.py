"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data; the header
``Inference-Header-Content-Length`` then gives the JSON part's length and each input that
carries binary data says how many bytes (``parameters.binary_data_size``). BYTES elements in
binary form are a 4-byte little-endian length followed by the bytes.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from batchserve.errors import InvalidInput, MalformedRequest, TooManyItems
from batchserve.settings import ServerSettings

HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 16
"""Most dimensions one tensor may have (TensorRT's engines take 8, numpy's arrays 64)."""
MAX_ELEMENTS = 1 << 26
"""Most elements one tensor may declare (its shape's product); bodies are capped anyway."""
MAX_TENSORS = 64
"""Most input tensors, and most requested outputs, in one request."""
DEFAULT_MAX_ITEMS: int = ServerSettings.model_fields["max_items"].default
_MAX_LENGTH_DIGITS = 19
"""An ``Inference-Header-Content-Length`` longer than this can't be a length within a body
(and ``int`` of a 4,301-digit string raises ValueError since Python 3.11)."""
_NAME_SHOWN = 80
"""Characters of a client's tensor name quoted back in an error message."""

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
PROTOCOL_PARAMETERS = {"binary_data_output", "binary_data", "binary_data_size", "timeout",
                        "priority", "sequence_id", "sequence_start", "sequence_end"}
_NUMBERS = frozenset({int, float})
_BOOLS = frozenset({bool})
_STRINGS = frozenset({str})
_LENGTH = struct.Struct("<I")


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


def parse_infer(body: bytes, header_length: bytes | None, *,
                max_items: int = DEFAULT_MAX_ITEMS) -> InferRequest:
    """Decode an infer request; malformed ones raise 422, bad tensor contents 400, a first
    dimension above ``max_items`` 413.

    Every shape is checked before anything is built from it, and the work is linear in the
    body with small constants (each tensor's elements are made once), so a caller may run it
    on the event loop for small bodies and in a thread for large ones.
    """
    json_part, binary = _split(body, header_length)
    try:
        payload = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedRequest("request must be a JSON object")
    specs = payload.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise MalformedRequest("'inputs' must be a non-empty list of tensors")
    if len(specs) > MAX_TENSORS:
        raise MalformedRequest(f"'inputs' has {len(specs)} tensors; at most {MAX_TENSORS}")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("'parameters' must be an object")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest("'id' must be a string")
    outputs = _requested_outputs(payload.get("outputs"))
    inputs: dict[str, Tensor] = {}
    offset = 0
    for index, spec in enumerate(specs):
        tensor, used = _input(spec, index, binary[offset:], max_items)
        offset += used
        if tensor.name in inputs:
            raise MalformedRequest(f"input {shown(tensor.name)} appears twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise MalformedRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return InferRequest(
        inputs=inputs, request_id=request_id,
        parameters={k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS},
        outputs=outputs, binary_output=parameters.get("binary_data_output") is True,
    )


def _split(body: bytes, header_length: bytes | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary tensor data after it."""
    if header_length is None:
        return body, memoryview(b"")
    # bytes.isdigit is ASCII only; the length of the digit string is bounded before int()
    if (not header_length.isdigit() or len(header_length) > _MAX_LENGTH_DIGITS
            or int(header_length) > len(body)):
        raise MalformedRequest(f"Inference-Header-Content-Length must be a length within the body "
                               f"of {len(body)} bytes")
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def shown(name: str) -> str:
    """A client's tensor name, quoted for an error message, cut short if long."""
    return repr(name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "...")


def _shape(spec: dict[str, Any], label: str, max_items: int) -> tuple[list[int], int]:
    return check_shape(spec.get("shape"), label, max_items)


def check_shape(shape: Any, label: str, max_items: int) -> tuple[list[int], int]:
    """The shape (a list) and its element count, each dimension bounded before anything is
    multiplied: 422 for what is no shape, 400 for one past the limits or with no elements, 413
    for a first dimension above ``max_items``. ``label``: the input's name as ``shown``."""
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS:
        dims = f"has {len(shape)} dimensions" if isinstance(shape, list) else "is not a list"
        raise MalformedRequest(f"input {label}: shape must be a list of 1 to {MAX_DIMS} "
                               f"non-negative integers; it {dims}")
    count = 1
    for axis, dim in enumerate(shape):
        if type(dim) is not int or dim < 0:
            what = repr(dim) if type(dim) is int else f"a {type(dim).__name__}"
            raise MalformedRequest(f"input {label}: shape must be a list of 1 to {MAX_DIMS} "
                                   f"non-negative integers; shape[{axis}] is {what}")
        if dim > MAX_ELEMENTS:
            raise InvalidInput(f"input {label}: shape[{axis}] = {dim} declares more than "
                               f"{MAX_ELEMENTS} elements")
        count *= dim  # both factors <= MAX_ELEMENTS: the product stays small
        if count > MAX_ELEMENTS:
            raise InvalidInput(f"input {label}: shape {shape} declares more than {MAX_ELEMENTS} elements")
    if shape[0] == 0:
        raise InvalidInput(f"input {label}: shape {shape} has no items; shape[0] must be at least 1")
    if count == 0:
        raise InvalidInput(f"input {label}: shape {shape} has no elements (a dimension is 0)")
    if shape[0] > max_items:
        raise TooManyItems(f"input {label}: shape[0] = {shape[0]} items; at most {max_items} per "
                           "request (BATCHSERVE_MAX_ITEMS)")
    return shape, count


def _input(spec: Any, index: int, binary: memoryview, max_items: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise MalformedRequest(f"inputs[{index}] must be an object")
    name, datatype = spec.get("name"), spec.get("datatype")
    if not isinstance(name, str):
        raise MalformedRequest(f"inputs[{index}].name must be a string")
    label = shown(name)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise MalformedRequest(f"input {label}: datatype must be one of {list(DATATYPES)}")
    shape, count = _shape(spec, label, max_items)
    parameters = spec.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise MalformedRequest(f"input {label}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise MalformedRequest(f"input {label}: binary_data_size must be a non-negative integer")
        if size > len(binary):
            raise MalformedRequest(f"input {label}: binary_data_size {size} exceeds the binary data "
                                   f"left ({len(binary)} bytes)")
        return Tensor(name, datatype, from_binary(binary[:size], datatype, shape, count, label)), size
    if "data" not in spec:
        raise MalformedRequest(f"input {label} has neither 'data' nor binary data")
    return Tensor(name, datatype, _from_json(spec["data"], datatype, shape, count, label)), 0


def from_binary(data: memoryview, datatype: str, shape: list[int], count: int,
                 label: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = _bytes_elements(bytes(data), count, shape, label)
        return array.reshape(shape)
    dtype = NUMPY_TYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(f"input {label}: {len(data)} bytes for shape {shape} of {datatype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _bytes_elements(raw: bytes, count: int, shape: list[int], label: str) -> list[bytes]:
    """``count`` BYTES elements, each a 4-byte little-endian length and its bytes, filling ``raw``."""
    if count * _LENGTH.size > len(raw):  # each element takes at least its length prefix
        raise InvalidInput(f"input {label}: {len(raw)} bytes cannot hold the {count} BYTES elements "
                           f"of shape {shape}")
    elements: list[bytes] = [b""] * count
    unpack, position, end = _LENGTH.unpack_from, 0, len(raw)
    try:
        for index in range(count):
            (length,) = unpack(raw, position)
            start = position + 4
            position = start + length
            elements[index] = raw[start:position]
    except struct.error:  # no 4 bytes left for element ``index``'s length
        if position > end:
            raise InvalidInput(f"input {label}: BYTES element {index - 1} runs past the data") from None
        raise InvalidInput(f"input {label}: the binary data ends before BYTES element {index}") from None
    if position > end:
        raise InvalidInput(f"input {label}: BYTES element {count - 1} runs past the data")
    if position != end:
        raise InvalidInput(f"input {label}: {end - position} bytes left after the {count} BYTES "
                           f"elements of shape {shape}")
    return elements


def _from_json(data: Any, datatype: str, shape: list[int], count: int,
               label: str) -> np.ndarray[Any, Any]:
    flat = _flatten(data, shape, label)
    if len(flat) != count:
        raise InvalidInput(f"input {label}: {len(flat)} elements for shape {shape}")
    kinds = set(map(type, flat))  # one pass in C over the elements
    if datatype == "BYTES":
        if not kinds <= _STRINGS:
            raise InvalidInput(f"input {label}: BYTES elements must be strings in JSON")
        array = np.empty(count, dtype=object)
        array[:] = [v.encode() for v in flat]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not kinds <= _BOOLS:
            raise InvalidInput(f"input {label}: BOOL elements must be true or false")
    elif not kinds <= _NUMBERS:
        raise InvalidInput(f"input {label}: {datatype} elements must be numbers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=NUMPY_TYPES[datatype])
    except (OverflowError, FloatingPointError, ValueError):
        raise InvalidInput(f"input {label}: a value does not fit {datatype}") from None
    return array.reshape(shape)


def _flatten(data: Any, shape: list[int], label: str) -> list[Any]:
    """Row-major elements of ``data``: a flat list, or lists nested as ``shape`` says."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {label}: 'data' must be a list")
    if list not in set(map(type, data)):  # each pass over the elements runs in C
        return data
    if len(data) != shape[0]:
        raise InvalidInput(f"input {label}: 'data' has {len(data)} rows for shape {shape}")
    level = data
    for axis in range(1, len(shape)):
        if set(map(type, level)) != {list} or set(map(len, level)) != {shape[axis]}:
            raise InvalidInput(f"input {label}: nested 'data' does not match shape {shape} "
                               f"at axis {axis}")
        level = list(chain.from_iterable(level))
    if list in set(map(type, level)):
        raise InvalidInput(f"input {label}: 'data' is nested deeper than its shape {shape}")
    return level


def _requested_outputs(specs: Any) -> dict[str, bool] | None:
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise MalformedRequest("'outputs' must be a list")
    if len(specs) > MAX_TENSORS:
        raise MalformedRequest(f"'outputs' has {len(specs)} entries; at most {MAX_TENSORS}")
    requested: dict[str, bool] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise MalformedRequest(f"outputs[{index}] must be an object with a name")
        parameters = spec.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise MalformedRequest(f"outputs[{index}].parameters must be an object")
        requested[spec["name"]] = parameters is not None and parameters.get("binary_data") is True
    return requested


def requested(request: InferRequest, tensors: list[Tensor]) -> list[Tensor]:
    """The outputs ``request`` asks for (every one when it names none); 400 for a name the model
    has not. REST's and gRPC's answers alike."""
    wanted = request.outputs
    if wanted is None:
        return tensors
    unknown = sorted(set(wanted) - {t.name for t in tensors})
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; this model has {[t.name for t in tensors]}")
    return [t for t in tensors if t.name in wanted]


def encode_response(model: str, request: InferRequest, tensors: list[Tensor],
                    version: str = "1") -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows it; ``version``:
    the version of ``model`` that answered."""
    wanted = request.outputs
    tensors = requested(request, tensors)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.array.shape)}
        binary = request.binary_output if wanted is None else wanted[tensor.name]
        if binary:
            blob = to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = tensor.array.reshape(-1)
            entry["data"] = ([v.decode("utf-8", "replace") for v in flat]
                             if tensor.datatype == "BYTES" else flat.tolist())
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.request_id is not None:
        header["id"] = request.request_id
    json_part = orjson.dumps(header)
    if not blobs:
        return json_part, None
    return json_part + b"".join(blobs), len(json_part)


def to_binary(tensor: Tensor) -> bytes:
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
