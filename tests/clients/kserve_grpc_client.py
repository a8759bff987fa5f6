"""Runs KServe's own gRPC client (``InferenceGRPCClient``, in its own virtualenv, see Makefile)
against a batchserve gRPC port.

Usage: .venv-kserve/bin/python tests/clients/kserve_grpc_client.py HOST:PORT
Prints one JSON object with what the client saw; tests/e2e/test_grpc_kserve.py checks it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


async def main(target: str) -> dict[str, Any]:
    client = InferenceGRPCClient(target, timeout=60)
    seen: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready("diabetes"),
    }
    features = np.array([ROW, [0.0] * 10], dtype=np.float64)
    for binary in (False, True):  # typed contents, then raw_input_contents
        tensor = InferInput(name="input", shape=list(features.shape), datatype="FP64")
        tensor.set_data_from_numpy(features, binary_data=binary)
        result = await client.infer(InferRequest(model_name="diabetes", infer_inputs=[tensor],
                                                 request_id=f"r-{binary}"))
        outputs = {o.name: o.as_numpy().tolist() for o in result.outputs}
        seen[f"diabetes_binary_{binary}"] = {"id": result.id, "outputs": outputs}
    short = InferInput(name="input", shape=[1, 3], datatype="FP64")
    short.set_data_from_numpy(np.array([ROW[:3]]), binary_data=False)
    try:
        await client.infer(InferRequest(model_name="diabetes", infer_inputs=[short]))
    except grpc.RpcError as exc:
        seen["error"] = {"code": exc.code().name, "details": exc.details()}
    await client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
