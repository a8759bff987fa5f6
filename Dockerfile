# batchserve container image: the server, its five demo models built in, served on 0.0.0.0:8000.
#
#   docker build -t batchserve .                     torch from pip's index: on PyPI, the CUDA build,
#                                                    for `docker run --gpus all` (it runs on CPUs too)
#   docker build --build-arg TORCH_INDEX_URL=URL --build-arg REQUIREMENTS=requirements/image-cpu.txt ...
#                                                    torch from another index (PyTorch's CPU wheels,
#                                                    a mirror), with a lock made against it
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt ...
#                                                    behind a TLS-inspecting proxy
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on 20.10). There is no
# `# syntax=` line on purpose: it would pull a frontend image, which an offline builder cannot.
# deploy/README.md has the measured sizes and build times, and the offline (air-gapped) path.

# Any Debian-like image works: python3 (>= 3.11) is installed from its packages when missing.
# debian:bookworm-slim gives Python 3.11; so does scripts/debian-base-image.sh, offline.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS python
# libgomp1 too: LightGBM's wheel links the system's OpenMP runtime instead of bundling one
# (lightgbm-org/LightGBM#7141); without it `import lightgbm` fails.
RUN missing=""; \
    command -v python3 >/dev/null || missing="python3"; \
    ldconfig -p | grep -q 'libgomp\.so\.1 ' || missing="$missing libgomp1"; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), "batchserve needs Python 3.11+"'


FROM python AS deps
RUN if ! python3 -c 'import ensurepip' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
# What is installed: a lock of exact versions, each with the SHA-256 of its files
# (scripts/lock-requirements.sh writes it from pyproject.toml); pip refuses any file whose hash
# differs (--require-hashes) and any requirement the lock does not pin. Copied by content, so an
# edit of pyproject.toml that leaves the lock alone (the dev extra, tool settings) reuses the big
# layer. The lock is resolved for Python 3.11 on Linux x86_64, like debian:bookworm-slim.
ARG REQUIREMENTS=requirements/image.txt
# Where torch comes from, besides pip's index: empty (the default) adds no index. PyPI's Linux
# torch is the CUDA build (several GB); for PyTorch's CPU wheels, pass the URL of their index and
# a lock made against it (deploy/README.md, "CPU image"). An index of your own works too.
ARG TORCH_INDEX_URL=
# Optional: a mirror of pip's index for everything (pip reads it from the environment).
ARG PIP_INDEX_URL
WORKDIR /src
# Dependencies only: this layer (torch, most of the image) is reused until the lock or
# TORCH_INDEX_URL change. No pip cache is kept: with the CUDA build it would be 4 GB more disk.
# The optional secret `ca-bundle` is a PEM bundle that pip trusts instead of its own (PIP_CERT):
# the way through a TLS-inspecting proxy. A secret is never stored in a layer.
COPY ${REQUIREMENTS} ./requirements.txt
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir --require-hashes -r requirements.txt \
    && pip check \
    && python3 -c 'import lightgbm, xgboost'


# The demo models; models/build_*.py need only the dependencies. Rebuilt when models/ changes.
FROM deps AS models
COPY models/ ./models/
# safetensors writes its files 0600: the server's user must be able to read them.
RUN mkdir -p /models/artifacts \
    && python3 models/build_diabetes.py /models/artifacts/diabetes.joblib \
    && python3 models/build_resnet50.py /models/artifacts/resnet50.safetensors \
    && python3 models/build_transformer.py /models/artifacts/transformer \
    && python3 models/build_xgboost.py /models/artifacts/cancer.json \
    && python3 models/build_minilm.py /models/artifacts/minilm \
    && cp models/models.toml /models/models.toml \
    && chmod -R a+rX,go-w /models


# The server, as a wheel: a change to server/ rebuilds only this and the last small layer.
FROM deps AS wheel
COPY pyproject.toml README.md ./
COPY server/ ./server/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .


# On top of deps, not a copy of its venv: copying it would write the 6 GB layer a second time
# (time, and disk for the builder). deps holds no compilers or sources, only Python and the venv.
FROM deps AS runtime
RUN groupadd --system --gid 10001 batchserve \
    && useradd --system --uid 10001 --gid batchserve --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin batchserve
COPY --from=models /models /models
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl \
    && rm -rf /src \
    && batchserve serve --help > /dev/null \
    && python3 -m batchserve.pinning /models/models.toml
# ^ pins the demo artifacts and sets [repository] require_sha256 = true: the container refuses
#   unpinned models by default (SECURITY.md); pin yours with `batchserve sha256 PATH`.
# The server writes nothing outside /tmp, so it runs on a read-only root file system too.
# BATCHSERVE_WORKERS=auto: as many worker processes as the container's CPU limit allows (the cgroup
# quota, `docker run --cpus N`, a Kubernetes limits.cpu; else the CPU affinity), divided by the
# cores one worker's models keep busy (docs/workers.md). Every worker loads every model:
# give the container a CPU limit and memory for that many copies (deploy/README.md, "Workers").
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    HF_HUB_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000 \
    BATCHSERVE_CONFIG=/models/models.toml \
    BATCHSERVE_GRPC_PORT=8001 \
    BATCHSERVE_WORKERS=auto
# The numeric user lets Kubernetes check runAsNonRoot.
USER 10001:10001
WORKDIR /models
# 8000: HTTP (REST, /metrics, the health routes); 8001: the Open Inference Protocol over gRPC
# (BATCHSERVE_GRPC_PORT, Triton's port; tritonclient.grpc and KServe's gRPC client) and the
# standard gRPC health service.
EXPOSE 8000
EXPOSE 8001
# No curl in the image: the check is Python's. It follows BATCHSERVE_PORT when that is changed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('BATCHSERVE_PORT', '8000'); sys.exit(urllib.request.urlopen(url, timeout=4).status != 200)"]
# Exec form: the server is PID 1 and gets SIGTERM itself (`docker stop`, Kubernetes), stops
# admitting, finishes what it admitted within --shutdown-grace-s (30 s) and exits 0. Give
# `docker stop -t` / terminationGracePeriodSeconds more than that. Flags after the image name
# are appended: `docker run batchserve --log-level debug`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchserve", "serve"]
