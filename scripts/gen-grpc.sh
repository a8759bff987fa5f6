#!/usr/bin/env bash
# Regenerate batchserve's Open Inference Protocol gRPC messages (server/batchserve/grpc_api/
# inference_pb2.py and its type stub .pyi) from inference.proto beside them, with grpcio-tools
# (the dev extra). The generated files are committed: serving needs only protobuf and grpcio.
# Usage: scripts/gen-grpc.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"
OUT=server/batchserve/grpc_api
"$PYTHON" -m grpc_tools.protoc -I "$OUT" --python_out="$OUT" --pyi_out="$OUT" "$OUT/inference.proto"
