"""In-process: a scikit-learn model's predict against its skl2onnx graph on ONNX Runtime, at the
server's batch sizes, for whether serving scikit-learn models through ONNX Runtime pays.

Models: the demo diabetes LinearRegression, and a StandardScaler + GradientBoostingRegressor
pipeline (100 trees) on the same data, as a heavier one. Both sides get float64 rows (the
sklearn backend's) and one thread; the linear model's graph is converted in double precision
(its outputs equal sklearn's), the trees' in float32 (ONNX Runtime's tree operator here
computes in float32), the rows cast as the graph takes them; the largest absolute difference
to sklearn's predictions is printed. Each batch size runs CALLS calls
per side, the sides alternating, ROUNDS times; the median ratio and its range are reported.

Usage: .venv/bin/python benchmarks/sklearn_onnx.py   (needs skl2onnx, the dev extra; ~1 minute)
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import harness
import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BATCHES = [int(n) for n in os.environ.get("BATCHES", "1,8,64").split(",")]
CALLS = int(os.environ.get("CALLS", "2000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def rate(call: Callable[..., Any], *args: Any) -> float:
    call(*args)
    started = time.perf_counter()
    for _ in range(CALLS):
        call(*args)
    return CALLS / (time.perf_counter() - started)


def sklearn_call(model: Any, rows: list[list[float]]) -> Any:
    """As the sklearn backend calls it: the rows as a float64 matrix."""
    return model.predict(np.asarray(rows, dtype=np.float64))


def onnx_call(session: Any, rows: list[list[float]]) -> Any:
    graph_input = session.get_inputs()[0]
    dtype = np.float64 if graph_input.type == "tensor(double)" else np.float32
    return session.run(None, {graph_input.name: np.asarray(rows, dtype=dtype)})[0]


def main() -> None:
    features, target = load_diabetes(return_X_y=True)
    models = {"LinearRegression (demo)": LinearRegression().fit(features, target),
              "scaler + GradientBoosting (100 trees)": make_pipeline(
                  StandardScaler(), GradientBoostingRegressor(random_state=0)).fit(features, target)}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    print(f"{os.uname().nodename}, {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"commit {harness.commit()}; {CALLS} calls a side, {ROUNDS} alternating rounds, 1 thread\n")
    print("| model | batch | sklearn calls/s | ORT calls/s | ORT / sklearn: median (range) | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        dtype = np.float64 if isinstance(model, LinearRegression) else np.float32
        graph = to_onnx(model, features[:1].astype(dtype), target_opset=17)
        session = onnxruntime.InferenceSession(graph.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        for batch in BATCHES:
            rows = features[:batch].tolist()
            difference = float(np.abs(sklearn_call(model, rows) - onnx_call(session, rows).reshape(-1)).max())
            pairs = [(rate(sklearn_call, model, rows), rate(onnx_call, session, rows)) for _ in range(ROUNDS)]
            ratios = [o / s for s, o in pairs]
            print(f"| {name} | {batch} | {statistics.median(s for s, _ in pairs):,.0f} | "
                  f"{statistics.median(o for _, o in pairs):,.0f} | {statistics.median(ratios):.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) | {difference:.2g} |")


if __name__ == "__main__":
    main()
