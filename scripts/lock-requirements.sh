#!/usr/bin/env bash
# Pin what the container image installs, with hashes: every runtime requirement of pyproject.toml
# (every extra but dev) and requirements/build.in, resolved to exact versions, each with the
# SHA-256 of every file of that version. The Dockerfile installs the result with
# `pip install --require-hashes`, so a file that differs from the one locked here is refused.
#
# Usage: scripts/lock-requirements.sh [OUTPUT [pip-compile options...]]
#   scripts/lock-requirements.sh                         requirements/image.txt (pip's default index)
#   scripts/lock-requirements.sh requirements/image.txt --upgrade          newest allowed versions
#   scripts/lock-requirements.sh requirements/image-cpu.txt --extra-index-url URL
#                                      torch from another index (PyTorch's CPU wheels, a mirror)
#   EXTRAS="onnx xgboost lightgbm tracing" scripts/lock-requirements.sh requirements/image-onnx.txt
#                                      the image without torch (Dockerfile.onnx)
#
# Needs pip-tools (`pip install pip-tools`), on Python 3.11 and Linux x86_64 like the image: the
# environment markers are resolved for the machine that runs this. PIPTOOLS_COMPILE names the command.
# pip's own configuration (pip.conf, PIP_INDEX_URL, ...) applies: the index it names is used,
# and is not written into the output.
set -euo pipefail
cd "$(dirname "$0")/.."

output=${1:-requirements/image.txt}
[ $# -gt 0 ] && shift
extras=()
for extra in ${EXTRAS:-vision text plan xgboost lightgbm tracing grpc onnx}; do extras+=(--extra "$extra"); done
CUSTOM_COMPILE_COMMAND="${EXTRAS:+EXTRAS=\"$EXTRAS\" }scripts/lock-requirements.sh $output${*:+ $*}" \
    "${PIPTOOLS_COMPILE:-pip-compile}" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    "${extras[@]}" \
    --output-file "$output" "$@" pyproject.toml requirements/build.in
