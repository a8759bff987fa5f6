"""The Open Inference Protocol over gRPC against REST, in one run: the server's CPU per request
and throughput, on one server serving both ports; and what a JPEG costs on the wire and to decode
as raw BYTES over gRPC vs base64 in v2 JSON.

1. Per-request CPU: one ``batchserve serve --grpc-port`` with diabetes and minilm, pinned to
   SERVER_CORE; the load generator (batchserve's own, ``loadtest``'s: pre-built requests, closed
   loop, CONCURRENCY connections) in this process on LOAD_CORE. For each model, ROUNDS rounds of
   REQUESTS requests (MINILM_REQUESTS for minilm) over REST's v2 JSON infer, ``/predict`` and
   gRPC's ModelInfer (raw_input_contents, as tritonclient.grpc sends them), the protocols'
   order alternating round to round (MODELS, MAX_WAIT_MS: which models, and their max_wait_ms,
   0 by default). The server's user+system CPU seconds between the end of a warm-up and the end
   of the run, divided by the requests answered (the few in flight at the end add under
   CONCURRENCY/REQUESTS to it); and the mean batch, from /metrics over the same window.
2. A JPEG (sklearn's china.jpg, 196 KB) through each protocol's decoding in-process: the bytes
   on the wire (the serialized ModelInferRequest vs the v2 JSON body) and the time from those
   bytes to the item the backend gets (protobuf parse and the v2 codec vs JSON parse, the codec
   and base64 decoding), DECODES times each, alternating, ROUNDS rounds.

Usage: .venv/bin/python benchmarks/grpc_bench.py [cpu] [jpeg]   (both by default)
Prints markdown tables and writes benchmarks/results/grpc-<time>.json.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import orjson

SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
ROUNDS = int(os.environ.get("ROUNDS", "4"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
REQUESTS = int(os.environ.get("REQUESTS", "4000"))
MINILM_REQUESTS = int(os.environ.get("MINILM_REQUESTS", "400"))
WARMUP_S = float(os.environ.get("WARMUP_S", "1"))
DECODES = int(os.environ.get("DECODES", "200"))
MODELS = os.environ.get("MODELS", "diabetes,minilm").split(",")
MAX_WAIT_MS = float(os.environ.get("MAX_WAIT_MS", "0"))
"""Both models' ``max_wait_ms``."""
ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
TEXT = "The battery life is great and the screen is sharp, but the speakers are thin."


def _requests(protocol: str, model: str, host: str, port: int) -> tuple[bytes, ...]:
    from batchserve_planning.load.client import build_request
    from batchserve_planning.load.grpc_client import build_grpc_requests
    from batchserve_planning.load.inputs import Sample

    item: Any = ROW if model == "diabetes" else TEXT
    if protocol == "grpc":
        datatype = "FP64" if model == "diabetes" else "BYTES"
        name = "input" if model == "diabetes" else "text"
        metadata = {"inputs": [{"name": name, "datatype": datatype, "shape": [-1]}]}
        return build_grpc_requests([Sample(item)], metadata, model=model, port=port).requests
    if protocol == "predict":
        body = orjson.dumps({"inputs": [item]})
        return (build_request(host, port, f"/predict/{model}", body, "application/json"),)
    tensor = ({"name": "input", "datatype": "FP64", "shape": [1, 10], "data": ROW} if model == "diabetes"
              else {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]})
    body = orjson.dumps({"inputs": [tensor]})
    return (build_request(host, port, f"/v2/models/{model}/infer", body, "application/json"),)


def _round(server: Any, grpc_port: int, protocol: str, model: str, count: int) -> dict[str, float]:
    from batchserve_planning.load.generator import run_load
    from batchserve_planning.load.results import summarize
    from batchserve_planning.load.shared import LoadSpec

    port = grpc_port if protocol == "grpc" else server.port
    spec = LoadSpec("127.0.0.1", port, _requests(protocol, model, "127.0.0.1", server.port),
                    concurrency=CONCURRENCY, duration_s=None, count=count, warmup_s=WARMUP_S,
                    protocol="grpc" if protocol == "grpc" else "http")
    marks: list[float] = []

    def batches() -> tuple[float, float]:
        return (harness.metric(server.url, "batchserve_batch_size_sum", model),
                harness.metric(server.url, "batchserve_batch_size_count", model))

    def mark() -> None:
        marks.append(harness.cpu_seconds([server.process.pid])[0])
        marks.extend(batches())

    run = run_load(spec, on_measure_start=mark, cpus=harness.cores(LOAD_CORE))
    cpu_s = harness.cpu_seconds([server.process.pid])[0] - marks[0]
    batched_rows, batch_count = batches()
    mean_batch = (batched_rows - marks[1]) / max(1.0, batch_count - marks[2])
    summary = summarize(run)
    answered = summary.status_counts.get("200", 0)
    if answered != summary.requests:
        raise harness.UncleanRun(f"{protocol} {model}: {summary.status_counts}")
    return {"cpu_us_per_request": cpu_s / answered * 1e6, "rps": summary.throughput_rps,
            "p99_ms": summary.latency_ms["p99"], "mean_batch": mean_batch}


def cpu() -> dict[str, Any]:
    wait = f"max_wait_ms = {MAX_WAIT_MS}"
    config_text = (f'[[models]]\nname = "diabetes"\nbackend = "sklearn"\npath = '
                   f'"{harness.demo_artifact("diabetes")}"\nmax_batch_size = 64\n{wait}\n\n'
                   f'[[models]]\nname = "minilm"\nbackend = "embedding"\npath = '
                   f'"{harness.demo_artifact("minilm")}"\nmax_batch_size = 32\n{wait}\n')
    from batchserve_planning.serverproc import ManagedServer

    results: dict[str, Any] = {}
    grpc_port = harness.free_port()
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "models.toml"
        config.write_text(f'[repository]\nroot = "/"\n\n{config_text}')
        server = ManagedServer(config, cpus=harness.cores(SERVER_CORE), grace_s=10,
                               args=["--grpc-port", str(grpc_port)])
        try:
            server.wait_ready(timeout_s=300)
            for model, count in (("diabetes", REQUESTS), ("minilm", MINILM_REQUESTS)):
                if model not in MODELS:
                    continue
                protocols = ["rest-v2", "predict", "grpc"]
                rounds: list[dict[str, dict[str, float]]] = []
                for index in range(ROUNDS):
                    order = protocols if index % 2 == 0 else protocols[::-1]
                    rounds.append({p: _round(server, grpc_port, p, model, count) for p in order})
                    print(f"{model} round {index + 1}: " + ", ".join(
                        f"{p} {r['cpu_us_per_request']:.0f} us/req {r['rps']:.0f} rps "
                        f"batch {r['mean_batch']:.1f}" for p, r in rounds[-1].items()), flush=True)
                results[model] = rounds
        finally:
            server.stop(timeout_s=60)
    return results


def jpeg() -> dict[str, Any]:
    import sklearn.datasets
    from batchserve.grpc_api import inference_pb2 as pb
    from batchserve.grpc_api.tensors import parse_request
    from batchserve.v2.codec import ImageClassifierCodec
    from batchserve.v2.tensors import parse_infer

    image = (Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / "china.jpg").read_bytes()
    request = pb.ModelInferRequest(model_name="resnet50")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
    message = request.SerializeToString()
    body = orjson.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "data": [base64.b64encode(image).decode()]}]})
    codec: Any = ImageClassifierCodec()

    def over_grpc() -> bytes:
        items = codec.items(None, parse_request(message, max_items=4096).request.inputs)
        assert items[0] == image  # raw JPEG bytes: the backend decodes them as they are
        return bytes(items[0])

    def over_rest() -> bytes:
        items = codec.items(None, parse_infer(body, None).inputs)
        decoded = base64.b64decode(items[0], validate=True)  # what the backend does with base64 text
        assert decoded == image
        return decoded

    rounds = []
    for index in range(ROUNDS):
        timed: dict[str, float] = {}
        for name, decode in (("grpc", over_grpc), ("rest", over_rest))[:: 1 if index % 2 == 0 else -1]:
            started = time.perf_counter()
            for _ in range(DECODES):
                decode()
            timed[name] = (time.perf_counter() - started) / DECODES * 1e6
        rounds.append(timed)
    return {"image_bytes": len(image), "grpc_message_bytes": len(message), "rest_body_bytes": len(body),
            "decode_us": rounds}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parts = sys.argv[1:] or ["cpu", "jpeg"]
    results: dict[str, Any] = {
        "commit": harness.commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"rounds": ROUNDS, "concurrency": CONCURRENCY, "requests": REQUESTS,
                     "minilm_requests": MINILM_REQUESTS, "max_wait_ms": MAX_WAIT_MS}}
    if "cpu" in parts:
        results["cpu"] = cpu()
        print("\n| model | protocol | server CPU us/request (median of rounds) | gRPC / it, per round: "
              "median (min-max) | RPS (median) | mean batch |\n|---|---|---|---|---|---|")
        for model, rounds in results["cpu"].items():
            for protocol in ("rest-v2", "predict", "grpc"):
                cpu_us = [r[protocol]["cpu_us_per_request"] for r in rounds]
                ratio = [r["grpc"]["cpu_us_per_request"] / r[protocol]["cpu_us_per_request"] for r in rounds]
                rps = statistics.median(r[protocol]["rps"] for r in rounds)
                batch = statistics.median(r[protocol]["mean_batch"] for r in rounds)
                print(f"| {model} | {protocol} | {statistics.median(cpu_us):.0f} | "
                      f"{_spread(ratio) if protocol != 'grpc' else '1'} | {rps:,.0f} | {batch:.1f} |")
    if "jpeg" in parts:
        results["jpeg"] = found = jpeg()
        ratios = [r["rest"] / r["grpc"] for r in found["decode_us"]]
        grpc_us = statistics.median(r["grpc"] for r in found["decode_us"])
        rest_us = statistics.median(r["rest"] for r in found["decode_us"])
        wire = found["rest_body_bytes"] / found["grpc_message_bytes"]
        print(f"\nJPEG of {found['image_bytes']:,} bytes: gRPC message {found['grpc_message_bytes']:,} "
              f"bytes, v2 JSON body {found['rest_body_bytes']:,} bytes ({wire:.2f}x); decoded to the "
              f"backend's item: gRPC {grpc_us:.0f} us, REST {rest_us:.0f} us (REST / gRPC {_spread(ratios)})")
    print(f"wrote {harness.save_results('grpc', results)}")
    json.dumps(results)


if __name__ == "__main__":
    main()
