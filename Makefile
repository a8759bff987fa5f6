# batchserve: `make serve` runs the demo server, `make test` runs lint, types, the docs site's strict build and the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8001
ARTIFACTS := models/artifacts/diabetes.joblib models/artifacts/resnet50.safetensors \
	models/artifacts/transformer/config.json models/artifacts/cancer.json \
	models/artifacts/minilm/modules.json

.PHONY: install serve test lint typecheck docs docs-build pytest artifacts bench clean grpc-proto

# Create the virtual environment once, and again whenever pyproject.toml changes: what serving
# needs (every backend's extra) for `make serve`; the test tools (the dev extra) for `make test`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[all]'
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[all,dev]'
	touch $(DEV_STAMP)

install:  ## create or refresh .venv with every extra and the test tools
	rm -f $(STAMP) $(DEV_STAMP)
	$(MAKE) $(DEV_STAMP)

models/artifacts/diabetes.joblib: models/build_diabetes.py | $(STAMP)
	$(BIN)/python models/build_diabetes.py $@

models/artifacts/resnet50.safetensors: models/build_resnet50.py | $(STAMP)
	$(BIN)/python models/build_resnet50.py $@

models/artifacts/transformer/config.json: models/build_transformer.py | $(STAMP)
	$(BIN)/python models/build_transformer.py models/artifacts/transformer

models/artifacts/cancer.json: models/build_xgboost.py | $(STAMP)
	$(BIN)/python models/build_xgboost.py $@

models/artifacts/minilm/modules.json: models/build_minilm.py | $(STAMP)
	$(BIN)/python models/build_minilm.py models/artifacts/minilm

artifacts: $(ARTIFACTS)  ## build the demo model artifacts that are missing

serve: $(STAMP) $(ARTIFACTS)  ## serve models/models.toml on 127.0.0.1:8000 (HTTP) and 8001 (gRPC)
	MALLOC_ARENA_MAX=2 $(BIN)/batchserve serve --config models/models.toml --host $(HOST) --port $(PORT) \
		--grpc-port $(GRPC_PORT)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# KServe's Python client pins versions that clash with ours: it gets its own venv, for the
# protocol tests (tests/unit/test_v2.py, and over gRPC tests/e2e/test_grpc_kserve.py) only.
KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.installed:
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --disable-pip-version-check 'kserve==0.21.0'
	touch $@

pytest: $(DEV_STAMP) $(KSERVE_VENV)/.installed
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/): served offline beside `make serve`'s port; built
# in strict mode by `make test`, so a broken link or a page missing from the nav fails it.
docs: $(DEV_STAMP)  ## serve the documentation site on 127.0.0.1:8003
	$(BIN)/mkdocs serve -a 127.0.0.1:8003

docs-build: $(DEV_STAMP)  ## build the documentation site into site/, strict
	$(BIN)/mkdocs build --strict --site-dir site

test: lint typecheck docs-build pytest  ## everything CI runs

# The gRPC messages (server/batchserve/grpc_api/inference_pb2.py and .pyi) are committed; this
# regenerates them from inference.proto with grpcio-tools (the dev extra).
grpc-proto: $(DEV_STAMP)  ## regenerate the gRPC messages from server/batchserve/grpc_api/inference.proto
	scripts/gen-grpc.sh $(BIN)/python

bench: $(DEV_STAMP) $(ARTIFACTS)  ## the HTTP benchmark of benchmarks/README.md (needs wrk)
	$(BIN)/python benchmarks/http_floor.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) models/artifacts site .pytest_cache .mypy_cache .ruff_cache

.PHONY: image image-cuda image-onnx lock services

IMAGE ?= batchserve
# Empty: torch from pip's index (PyPI's Linux torch is the CUDA build). For another index (PyTorch's
# CPU wheels, a mirror) give its URL and a lock made against it (`make lock LOCK_ARGS=...`).
TORCH_INDEX_URL ?=
REQUIREMENTS ?= requirements/image.txt
image:  ## build the image; TORCH_INDEX_URL=url REQUIREMENTS=lock for another torch; CA_BUNDLE=file behind a TLS proxy
	scripts/build-image.sh --tag $(IMAGE):latest --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) \
		--build-arg REQUIREMENTS=$(REQUIREMENTS)

image-cuda:  ## build the CUDA image (pip's index: PyPI's torch), for `docker run --gpus all`
	scripts/build-image.sh --tag $(IMAGE):cuda

image-onnx:  ## build the image without torch (Dockerfile.onnx): ONNX Runtime, scikit-learn, trees
	scripts/build-image.sh --file Dockerfile.onnx --tag $(IMAGE):onnx

LOCK_ARGS ?=
lock:  ## re-pin requirements/image.txt with hashes from pyproject.toml (needs pip-tools)
	scripts/lock-requirements.sh $(REQUIREMENTS) $(LOCK_ARGS)

services:  ## as root: install and start Docker and Prometheus for the service tests
	bash scripts/ci-services.sh
