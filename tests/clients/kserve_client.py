"""Runs KServe's own Python client (in its own virtualenv, see Makefile) against a batchserve URL.

Usage: .venv-kserve/bin/python tests/clients/kserve_client.py URL
Prints one JSON object with what the client saw; tests/unit/test_v2.py checks it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


async def main(base: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    seen: dict[str, Any] = {
        "live": await client.is_server_live(base),
        "ready": await client.is_server_ready(base),
        "model_ready": await client.is_model_ready(base, "diabetes"),
    }
    features = np.array([ROW, [0.0] * 10], dtype=np.float64)
    for binary in (False, True):
        tensor = InferInput(name="input", shape=list(features.shape), datatype="FP64")
        tensor.set_data_from_numpy(features, binary_data=binary)
        result = await client.infer(base, InferRequest(model_name="diabetes", infer_inputs=[tensor],
                                                       request_id=f"r-{binary}"), model_name="diabetes")
        outputs = {o.name: o.as_numpy().tolist() for o in result.outputs}
        seen[f"diabetes_binary_{binary}"] = {"id": result.id, "outputs": outputs}
    text = InferInput(name="text", shape=[2], datatype="BYTES")
    text.set_data_from_numpy(np.array([b"great battery", b"it broke"], dtype=object), binary_data=False)
    result = await client.infer(base, InferRequest(model_name="sentiment", infer_inputs=[text]),
                                model_name="sentiment")
    seen["text"] = {o.name: [v.decode() if isinstance(v, bytes) else v for v in o.as_numpy().tolist()]
                    for o in result.outputs}
    await client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
