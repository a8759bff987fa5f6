"""The load generator's ModelInferRequests (encoded by hand: the load client imports nothing of
the server) read back by the server's own protobuf messages as what they were built from."""

from __future__ import annotations

import struct

import numpy as np
from batchserve.grpc_api import inference_pb2 as pb
from batchserve_planning.load.grpc_client import build_grpc_requests
from batchserve_planning.load.inputs import Sample


def test_numbers_and_parameters_read_back() -> None:
    rows = [[0.5, -1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.5]]
    built = build_grpc_requests([Sample(r) for r in rows],
                                {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]},
                                model="m", port=8001, rows_per_request=2,
                                parameters={"top_k": 3, "flag": True, "ratio": 0.25, "mode": "x", "low": -7})
    assert len(built.requests) == 2 and built.rows_per_request == 2
    assert (built.protocol, built.port) == ("grpc", 8001)  # where the load generator sends them
    message = pb.ModelInferRequest.FromString(built.requests[1])
    assert message.model_name == "m"
    [tensor] = message.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("input", "FP32", [2, 3])
    values = np.frombuffer(message.raw_input_contents[0], dtype="<f4").reshape(2, 3)
    assert values.tolist() == [rows[2], rows[0]]  # the samples in turn, wrapping around
    parameters = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in message.parameters.items()}
    assert parameters == {"top_k": 3, "flag": True, "ratio": 0.25, "mode": "x", "low": -7}


def test_text_and_images_as_length_prefixed_bytes() -> None:
    built = build_grpc_requests([Sample("héllo"), Sample(b"\xff\xd8\xff", "image/jpeg")],
                                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]},
                                model="m", port=8001, rows_per_request=2)
    message = pb.ModelInferRequest.FromString(built.requests[0])
    assert list(message.inputs[0].shape) == [2]
    raw = message.raw_input_contents[0]
    first = "héllo".encode()
    assert raw == struct.pack("<I", len(first)) + first + struct.pack("<I", 3) + b"\xff\xd8\xff"
