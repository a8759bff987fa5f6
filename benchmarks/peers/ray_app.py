"""Ray Serve serving the diabetes model: @serve.batch(64, 5 ms), one replica, num_cpus=1.

Runs in its own virtual environment (benchmarks/peers.py installs it). Usage:
python ray_app.py MODEL.joblib PORT
"""

from __future__ import annotations

import sys
import time
from typing import Any

import joblib
import numpy as np
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class Diabetes:
    def __init__(self, path: str) -> None:
        self.model = joblib.load(path)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)  # type: ignore[untyped-decorator]
    async def predict(self, rows: list[list[float]]) -> list[float]:
        outputs: list[float] = self.model.predict(np.asarray(rows)).tolist()
        return outputs

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"model": "diabetes", "outputs": [await self.predict(body["inputs"][0])]}


if __name__ == "__main__":
    ray.init(num_cpus=1, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
    serve.run(Diabetes.bind(sys.argv[1]), route_prefix="/predict")  # type: ignore[attr-defined]
    while True:
        time.sleep(3600)
