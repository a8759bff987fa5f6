"""Triton (via nvidia-pytriton) serving the diabetes model with its dynamic batcher (64 rows, 5 ms).

Runs in its own Python 3.12 virtual environment (benchmarks/peers.py installs it; pytriton fails
on Python 3.11.7 here). Endpoint: the v2 protocol, POST /v2/models/diabetes/infer with an FP64
tensor of shape [1, 10]. Usage: python pytriton_app.py MODEL.joblib HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MODEL = joblib.load(sys.argv[1])


@batch  # type: ignore[untyped-decorator]
def infer(features: np.ndarray) -> dict[str, Any]:
    return {"outputs": MODEL.predict(features).reshape(-1, 1)}


if __name__ == "__main__":
    http_port, grpc_port, metrics_port = (int(p) for p in sys.argv[2:5])
    config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port, metrics_port=metrics_port, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="diabetes", infer_func=infer,
                    inputs=[Tensor(name="features", dtype=np.float64, shape=(10,))],
                    outputs=[Tensor(name="outputs", dtype=np.float64, shape=(1,))],
                    config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=5000)))
        triton.serve()
