"""LitServe serving the diabetes model, batching as in shared/ANCHORS.md (64 rows / 5 ms).

Runs in its own virtual environment (benchmarks/peers.py installs it). Usage:
python litserve_app.py MODEL.joblib PORT
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time
# to build its endpoint, and a string it cannot resolve makes the body a query parameter.
import sys
from typing import Any

import joblib
import litserve as ls
import numpy as np


class Diabetes(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = joblib.load(sys.argv[1])

    def decode_request(self, request: dict[str, Any]) -> list[float]:
        row: list[float] = request["inputs"][0]
        return row

    def batch(self, inputs: list[list[float]]) -> np.ndarray:
        return np.asarray(inputs)

    def predict(self, x: np.ndarray) -> list[float]:
        outputs: list[float] = self.model.predict(x).tolist()
        return outputs

    def unbatch(self, output: list[float]) -> list[float]:
        return output

    def encode_response(self, output: float) -> dict[str, Any]:
        return {"model": "diabetes", "outputs": [output]}


if __name__ == "__main__":
    server = ls.LitServer(Diabetes(max_batch_size=64, batch_timeout=0.005), accelerator="cpu",
                          workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), generate_client_file=False, log_level="warning")
