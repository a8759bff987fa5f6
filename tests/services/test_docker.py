"""The container image, for real: built by a Docker engine, run, asked, scraped and drained.

Needs a Docker engine whose builder is BuildKit, and a base image (scripts/ci-services.sh installs
and starts both, as root). Without them these tests skip, saying why, unless
BATCHSERVE_REQUIRE_SERVICES=1 (set by .ci/run), where they fail instead.

The image is built as the Dockerfile's defaults build it: from requirements/image.txt (hashed),
torch from pip's index (PyPI's CUDA build), on a Debian base made offline.
BATCHSERVE_TEST_TORCH_INDEX_URL and BATCHSERVE_TEST_REQUIREMENTS build another torch.
Containers use the host's network and bind 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import grpc
import httpx
import numpy as np
import pytest
import sklearn.datasets
import tritonclient.grpc as triton
import xgboost
import yaml
from batchserve_planning.load.scrape import ServerError, wait_ready
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.linear_model import LinearRegression

from tests.support import ROOT, build_demo, free_port

pytestmark = pytest.mark.slow

IMAGE = os.environ.get("BATCHSERVE_TEST_IMAGE", "batchserve:test")
BASE_IMAGE = os.environ.get("BATCHSERVE_BASE_IMAGE", "batchserve/debian-base:bookworm")
TORCH_INDEX_URL = os.environ.get("BATCHSERVE_TEST_TORCH_INDEX_URL", "")  # "": pip's own index
REQUIREMENTS = os.environ.get("BATCHSERVE_TEST_REQUIREMENTS", "requirements/image.txt")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 45 * 60
GRACE_S = 60
"""The server's --shutdown-grace-s in the drain test; `docker stop` waits longer before SIGKILL."""
STOP_TIMEOUT_S = GRACE_S + 30
CHINA_JPG = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
DIABETES_ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("BATCHSERVE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (BATCHSERVE_REQUIRE_SERVICES=1; scripts/ci-services.sh sets it up)")
    pytest.skip(f"{reason}; scripts/ci-services.sh sets it up (as root)")


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


# -- the Dockerfile, read without a daemon ----------------------------------------------------------


def test_dockerfile_runs_the_server_as_pid_1_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)
    assert len(entrypoint) == 1
    assert json.loads(entrypoint[0]) == ["batchserve", "serve"]  # exec form: no shell between
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n.*CMD \[\"python3\".*/healthz", text, re.MULTILINE)
    assert re.search(r"^ARG BASE_IMAGE=", text, re.MULTILINE)


def test_dockerfile_installs_the_openmp_runtime_lightgbm_links() -> None:
    """LightGBM's wheel needs the system's libgomp.so.1, which slim Debian images lack."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    python_stage = text[text.index("AS python"):text.index("AS deps")]
    assert "libgomp1" in python_stage and "libgomp\\.so\\.1" in python_stage


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "models/artifacts", ".pytest_cache", ".mypy_cache", ".ruff_cache",
            "**/__pycache__"} <= ignored


# -- the image, built and run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build IMAGE with scripts/build-image.sh; BuildKit's cache makes a rebuild take seconds."""
    if shutil.which("docker") is None:
        unavailable("no docker client")
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout_s=30)
    if info.returncode != 0:
        unavailable(f"no Docker engine answers: {info.stderr.strip()}")
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        unavailable(f"base image {BASE_IMAGE} is missing")
    env = dict(os.environ)
    ca_bundle = os.environ.get("BATCHSERVE_BUILD_CA_BUNDLE", str(SYSTEM_CA_BUNDLE))
    if ca_bundle and Path(ca_bundle).is_file():
        env["CA_BUNDLE"] = ca_bundle  # a TLS-inspecting proxy's CA reaches pip in the build
    log = tmp_path_factory.mktemp("docker-build") / "build.log"
    with log.open("w") as out:
        result = subprocess.run(
            [str(ROOT / "scripts" / "build-image.sh"), "--progress=plain", "--network=host",
             "--tag", IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
             "--build-arg", f"TORCH_INDEX_URL={TORCH_INDEX_URL}",
             "--build-arg", f"REQUIREMENTS={REQUIREMENTS}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-60:])
        pytest.fail(f"docker build exited {result.returncode}; last lines of {log}:\n{tail}")
    return IMAGE


class Container:
    """``docker run`` of the image on the host's network, bound to 127.0.0.1 on a free port."""

    def __init__(self, image: str, *env: str) -> None:
        self.name = f"batchserve-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # --read-only and a /tmp tmpfs: what deploy/kubernetes's securityContext asks of the image.
        # The image's gRPC port (8001) moved to a free one too: on the host's network it would be
        # the host's 8001.
        self.grpc_port = free_port()
        docker("run", "--detach", "--name", self.name, "--network", "host", "--read-only",
               "--tmpfs", "/tmp", "--env", "BATCHSERVE_HOST=127.0.0.1",
               "--env", f"BATCHSERVE_PORT={self.port}", "--env", f"BATCHSERVE_GRPC_PORT={self.grpc_port}",
               *(a for e in env for a in ("--env", e)), image)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)
        return state

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout_s: float = 300) -> None:
        try:
            wait_ready(f"{self.url}/readyz", timeout_s, alive=lambda: bool(self.state()["Running"]),
                       interval_s=0.5)
        except ServerError as exc:
            raise AssertionError(f"{exc}: {self.state()}\n{self.logs()}") from None

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


@contextlib.contextmanager
def running(image: str, *env: str) -> Iterator[Container]:
    container = Container(image, *env)
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Container]:
    with running(image) as container:
        yield container


def test_image_runs_as_pid_1_non_root_and_reports_healthy(served: Container) -> None:
    assert docker("exec", served.name, "id", "-u").stdout.strip() == "10001"
    command = docker("exec", served.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "batchserve" in command[1] and command[2] == "serve"  # python .../batchserve serve
    deadline = time.monotonic() + 120  # the HEALTHCHECK's first run comes after its interval
    while (health := served.state()["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting" and time.monotonic() < deadline, health
        time.sleep(1)


def test_every_demo_model_answers(served: Container, tmp_path: Path) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        response = client.post("/predict", json={"model": "diabetes", "inputs": [DIABETES_ROW]})
        assert response.status_code == 200, response.text
        features, target = sklearn.datasets.load_diabetes(return_X_y=True)
        expected = LinearRegression().fit(features, target).predict(np.array([DIABETES_ROW]))[0]
        assert response.json()["outputs"] == [pytest.approx(expected, rel=1e-9)]

        response = client.post("/predict/resnet50", params={"top_k": 3}, content=CHINA_JPG.read_bytes(),
                               headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        [top] = response.json()["outputs"]
        assert len(top) == 3
        assert all(isinstance(c["label"], str) and 0 <= c["index"] < 1000 for c in top)
        probabilities = [c["probability"] for c in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6

        tumours = sklearn.datasets.load_breast_cancer().data[[0, 19]]  # a malignant and a benign one
        rows: list[list[float]] = tumours.tolist()
        response = client.post("/predict/cancer", json={"inputs": rows})
        assert response.status_code == 200, response.text
        booster = xgboost.Booster(model_file=str(build_demo("build_xgboost.py", tmp_path / "cancer.json")))
        benign = booster.predict(xgboost.DMatrix(tumours), validate_features=False).tolist()
        assert [o["label"] for o in response.json()["outputs"]] == ["malignant", "benign"]
        assert [o["scores"]["benign"] for o in response.json()["outputs"]] == pytest.approx(
            benign, rel=1e-6)  # the same deterministic model, built here

        response = client.post("/predict/sentiment", json={"inputs": ["the battery is fantastic",
                                                                      "the zipper broke after a week"]})
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert len(outputs) == 2
        for output in outputs:
            assert output["label"] in ("negative", "neutral", "positive")
            assert sum(output["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_grpc_answers_as_rest_does_and_its_health_service_is_serving(image: str, served: Container) -> None:
    """tritonclient.grpc against the container's gRPC port (the image's 8001, moved to a free port
    on the host's network), the answer equal to REST's from the same container."""
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert "8001/tcp" in config["ExposedPorts"] and "BATCHSERVE_GRPC_PORT=8001" in config["Env"]
    target = f"127.0.0.1:{served.grpc_port}"
    rows = np.array([DIABETES_ROW, [-value for value in DIABETES_ROW]])
    with triton.InferenceServerClient(target) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("diabetes")
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        answered = client.infer("diabetes", [tensor]).as_numpy("output")
    assert answered is not None
    response = httpx.post(f"{served.url}/v2/models/diabetes/infer", timeout=60, json={"inputs": [
        {"name": "input", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}]})
    assert response.status_code == 200, response.text
    assert answered.tolist() == response.json()["outputs"][0]["data"]
    with grpc.insecure_channel(target) as channel:
        check: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "diabetes"):
            status = check.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_metrics_are_scraped_for_every_model(served: Container) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/predict/diabetes", json={"inputs": [DIABETES_ROW]}).status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for model in ("diabetes", "resnet50", "sentiment"):
        assert f'batchserve_model_ready{{model="{model}"}} 1.0' in text
    match = re.search(r'^batchserve_requests_total\{code="200",model="diabetes"\} (\S+)$', text, re.MULTILINE)
    assert match and float(match.group(1)) >= 3
    assert re.search(r'^batchserve_batch_size_count\{model="diabetes"\} [1-9]', text, re.MULTILINE)


def metric_value(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} not in /metrics"
    return float(match.group(1))


def test_docker_stop_drains_admitted_requests_and_exits_0(image: str) -> None:
    images = [base64.b64encode(CHINA_JPG.read_bytes()).decode()] * 8  # one full batch per request
    requests = 4
    with running(image, f"BATCHSERVE_SHUTDOWN_GRACE_S={GRACE_S}") as container, \
            httpx.Client(base_url=container.url, timeout=STOP_TIMEOUT_S) as client, \
            ThreadPoolExecutor(requests) as pool:
        def rows_admitted_and_queued(before: float) -> tuple[float, float]:
            text = client.get("/metrics").text
            queued = metric_value(text, "batchserve_queue_rows", "resnet50")
            dispatched = metric_value(text, "batchserve_batch_size_sum", "resnet50") - before
            return queued + dispatched, queued

        before = metric_value(client.get("/metrics").text, "batchserve_batch_size_sum", "resnet50")
        futures = [pool.submit(client.post, "/predict/resnet50", json={"inputs": images})
                   for _ in range(requests)]
        # Stop only once every row is admitted (a request that arrives after SIGTERM gets 503) and
        # rows still wait: 32 ResNet50 rows take the CPU seconds, so they do.
        deadline = time.monotonic() + 120
        while (admitted := rows_admitted_and_queued(before))[0] < requests * len(images):
            assert time.monotonic() < deadline, f"rows admitted, queued: {admitted}"
            time.sleep(0.05)
        assert admitted[1] > 0, "nothing was left in flight to drain"
        docker("stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout_s=STOP_TIMEOUT_S + 30)
        answers = [future.result() for future in futures]
        assert [a.status_code for a in answers] == [200] * requests, [a.text for a in answers]
        assert all(len(a.json()["outputs"]) == len(images) for a in answers)
        state = container.state()
        # 0, not 137: the server exited by itself after draining, before docker's SIGKILL.
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), state
        assert "shutdown complete" in container.logs()


# -- deploy/docker-compose.yml, with nginx and Prometheus built from Debian's packages ---------------


def compose_command() -> list[str]:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run(
                [*command, "version"], capture_output=True, timeout=60).returncode == 0:
            return command
    unavailable("no docker compose (plugin or Debian's docker-compose)")


def prometheus_value(url: str, promql: str) -> float | None:
    """The single value of ``promql``, or ``None`` while it has no result."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", (promql, body)
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_compose_files_are_valid_and_mount_files_that_exist() -> None:
    """`compose config` validates against the Compose schema; no daemon and no images needed."""
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "deploy" / "docker-compose.yml"),
         "-f", str(ROOT / "deploy" / "compose.offline.yml"), "config"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"batchserve", "nginx", "prometheus", "grafana"}
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)  # loopback only
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), (name, source)
        # No capabilities beyond what nginx's master needs, no privilege gain, read-only roots.
        assert service.get("cap_drop") == ["ALL"], name
        needed = {"CHOWN", "SETGID", "SETUID"} if name == "nginx" else set()
        assert set(service.get("cap_add", [])) <= needed, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name != "grafana":  # Grafana's image was never run here: not made read-only blind
            assert service.get("read_only") is True, name
    # The management port is not published, and nginx proxies the API's port only.
    assert all(str(p.get("target") if isinstance(p, dict) else p).split(":")[-1] != "8002"
               for s in services.values() for p in s.get("ports", []))
    nginx = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    assert re.findall(r"server batchserve:(\d+)", nginx) == ["8000"]


def test_compose_stack_balances_replicas_and_prometheus_scrapes_each(image: str) -> None:
    compose = [*compose_command(), "-f", str(ROOT / "deploy" / "docker-compose.yml"),
               "-f", str(ROOT / "deploy" / "compose.offline.yml"),
               "--project-name", f"batchserve-test-{uuid.uuid4().hex[:8]}"]
    http_url, prometheus_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    env = {**os.environ, "BASE_IMAGE": BASE_IMAGE, "BATCHSERVE_IMAGE": image,
           "BATCHSERVE_HTTP_PORT": http_url.rsplit(":", 1)[1],
           "PROMETHEUS_PORT": prometheus_url.rsplit(":", 1)[1]}

    def run(*args: str, timeout_s: float = 300) -> None:
        result = subprocess.run([*compose, *args], env=env, capture_output=True, text=True, timeout=timeout_s)
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"

    run("build", "nginx", "prometheus", timeout_s=900)
    try:
        run("up", "--detach", "--no-build", "--scale", "batchserve=2", "batchserve", "nginx", "prometheus")
        # Both replicas up, every model ready in each, as Prometheus sees them through DNS discovery.
        deadline = time.monotonic() + 240
        ready = 'sum(batchserve_model_ready) and count(up{job="batchserve"} == 1) == 2'
        models = len(tomllib.loads((ROOT / "models" / "models.toml").read_text())["models"])
        while prometheus_value(prometheus_url, ready) != 2 * models:
            assert time.monotonic() < deadline, (f"Prometheus did not see 2 replicas with {models} "
                                                 "ready models each")
            time.sleep(1)
        with httpx.Client(base_url=http_url, timeout=60) as client:
            for _ in range(10):
                response = client.post("/predict/diabetes", json={"inputs": [DIABETES_ROW]})
                assert response.status_code == 200, response.text
            assert client.get("/metrics").status_code == 404  # metrics are per replica, not via nginx
        # nginx spread the requests over both replicas, and Prometheus scraped each of them.
        promql = 'batchserve_requests_total{model="diabetes",code="200"}'
        while prometheus_value(prometheus_url, f"count({promql} > 0) == 2 and sum({promql}) == 10") is None:
            assert time.monotonic() < deadline + 120, "the 10 requests were not seen on both replicas"
            time.sleep(1)
    finally:
        run("down", "--volumes", "--remove-orphans", "--timeout", "60")
