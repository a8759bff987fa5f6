"""A real Prometheus scrapes a real ``batchserve serve``; the dashboard and the adapter rule are
queried through it.

Prometheus is Debian's package run as a plain process: loopback ports, storage in a temporary
folder, a scrape every second. scripts/ci-services.sh installs it; without it these tests skip,
unless BATCHSERVE_REQUIRE_SERVICES=1 (set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml
from batchserve_planning.load.scrape import ServerError, wait_ready
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, ServerProcess, free_port, running_server, write_models

pytestmark = pytest.mark.slow

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "batchserve.json"
ADAPTER_VALUES = DEPLOY / "kubernetes" / "prometheus-adapter" / "values.yaml"
# What a ServiceMonitor's scrape adds in Kubernetes, added here by the scrape config, so that the
# prometheus-adapter rule can be run as the adapter would run it.
NAMESPACE, POD = "batchserve", "batchserve-7d9f-abcde"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".+", "$instance": ".+"}


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("BATCHSERVE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (BATCHSERVE_REQUIRE_SERVICES=1; scripts/ci-services.sh sets it up)")
    pytest.skip(f"{reason}; scripts/ci-services.sh installs it (as root)")


class Prometheus:
    """``prometheus`` on a free loopback port, scraping ``target`` every second."""

    def __init__(self, binary: str, folder: Path, target: str) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "batchserve",
                "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}],
            }],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        try:
            wait_ready(f"{self.url}/-/ready", timeout_s, alive=lambda: self.process.poll() is None,
                       interval_s=0.2)
        except ServerError as exc:
            raise AssertionError(f"prometheus: {exc}\n{self.log.read_text()}") from None

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        """The result of ``promql`` once it is not empty (the scrapes it needs have happened)."""
        deadline = time.monotonic() + timeout_s
        while not (result := self.query(promql)):
            assert time.monotonic() < deadline, f"no data for {promql} in {timeout_s} s"
            time.sleep(0.5)
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("prometheus-server")
    config = write_models(folder / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "max_batch_size": 8},
        # Versions (a canary, a shadow of each output kind), for the per-version panels; the
        # same largest batch as diabetes (the batch size histogram's buckets are the server's).
        {"name": "canary", "backend": "echo", "path": "x", "max_batch_size": 8, "versions": [
            {"version": "1", "weight": 0.5}, {"version": "2", "weight": 0.5, "options": {"scale": 3.0}},
            {"version": "3", "shadow": 1.0, "options": {"offset": 0.5}}]},
        {"name": "classifier", "backend": "sign", "path": "x", "max_batch_size": 8, "versions": [
            {"version": "1"}, {"version": "2", "shadow": 1.0, "options": {"threshold": 1.0}}]},
        {"name": "embedder", "backend": "text-length", "path": "x", "max_batch_size": 8, "versions": [
            {"version": "1"}, {"version": "2", "shadow": 1.0}]},
    ])
    inputs = {"diabetes": [[0.01] * 10] * 3, "canary": [1.0, 2.0], "classifier": [[0.5, 0.25]],
              "embedder": ["two words"]}
    with running_server(config) as process:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            for _ in range(10):
                for model, items in inputs.items():
                    response = client.post(f"/predict/{model}", json={"inputs": items})
                    assert response.status_code == 200, response.text
        yield process


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, server: ServerProcess) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("no prometheus binary (Debian's `prometheus` package)")
    instance = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), server.url.removeprefix("http://"))
    try:
        instance.wait_ready()
        yield instance
    finally:
        instance.stop()


def test_prometheus_scrapes_the_server_and_promql_returns_batch_sizes(prometheus: Prometheus) -> None:
    [sample] = prometheus.wait_for('batchserve_batch_size_count{model="diabetes"}')
    assert float(sample["value"][1]) >= 1
    assert sample["metric"]["job"] == "batchserve"
    [rows] = prometheus.wait_for('sum by (model) (batchserve_batch_size_sum{model="diabetes"}) >= 30')
    assert float(rows["value"][1]) == 30  # 10 requests of 3 rows, every row in some batch
    buckets = prometheus.wait_for('batchserve_batch_size_bucket{model="diabetes"}')
    assert {b["metric"]["le"] for b in buckets} == {"1.0", "2.0", "4.0", "8.0", "+Inf"}
    targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_metric_the_dashboard_queries_is_exported(server: ServerProcess) -> None:
    scrape = httpx.get(f"{server.url}/metrics", timeout=10).text
    exported = {sample.name for family in text_string_to_metric_families(scrape) for sample in family.samples}
    queried = {name for expr in dashboard_queries() for name in re.findall(r"\bbatchserve_\w+", expr)}
    assert queried, "the dashboard queries no batchserve metric"
    assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"
    # Each panel the issue asks for is there.
    joined = "\n".join(dashboard_queries())
    for needed in ("batchserve_requests_total", "histogram_quantile(0.5", "histogram_quantile(0.99",
                   "batchserve_queue_wait_seconds_bucket", "batchserve_batch_size", "by (model, trigger)",
                   "by (model, reason)", "by (model, version)", "by (model, version, le)",
                   "batchserve_shadow_label_agreement_sum", "batchserve_shadow_cosine_bucket",
                   "batchserve_shadow_abs_diff_sum"):
        assert needed in joined, needed


def test_every_dashboard_query_runs_and_returns_data(prometheus: Prometheus) -> None:
    prometheus.wait_for('count_over_time(batchserve_model_ready{model="diabetes"}[1m]) >= 3')
    for expr in dashboard_queries():
        promql = expr
        for variable, value in GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, value)
        assert "$" not in promql, f"unknown Grafana variable in {expr}"
        assert prometheus.query(promql), f"no data for the dashboard's {expr}"


def test_prometheus_adapter_rule_gives_queued_rows_per_pod(prometheus: Prometheus) -> None:
    """Run the rule's queries as prometheus-adapter does for the HPA's `pods/batchserve_queue_rows`."""
    [rule] = [r for r in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
              if r["name"]["as"] == "batchserve_queue_rows"]
    series = httpx.get(f"{prometheus.url}/api/v1/series", params={"match[]": rule["seriesQuery"]},
                       timeout=10).json()["data"]
    assert {s["__name__"] for s in series} == {"batchserve_queue_rows"}  # a series per model
    assert re.fullmatch(rule["name"]["matches"], series[0]["__name__"])
    labels = rule["resources"]["overrides"]
    assert labels == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    # What the adapter substitutes for a request about the pods of one namespace.
    promql = (rule["metricsQuery"].replace("<<.Series>>", "batchserve_queue_rows")
              .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
              .replace("<<.GroupBy>>", "pod"))
    [sample] = prometheus.wait_for(promql)
    assert sample["metric"] == {"pod": POD}
    assert float(sample["value"][1]) == 0  # idle: nothing queued


def test_compose_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("no promtool (Debian's `prometheus` package)")
    result = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
