"""deploy/kubernetes, offline: every manifest against the Kubernetes API schemas, and the manifests
against each other, the image and the server.

kubernetes-validate carries the schemas of the built-in kinds only. The ServiceMonitor (a Prometheus
Operator CRD) is not among them: its links to the Service are checked here instead. The
prometheus-adapter rule is Helm values, not a resource: tests/services/test_prometheus.py runs its
queries against a real Prometheus.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from batchserve.config import parse_models

from tests.support import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
MANIFESTS = sorted(p for p in KUBERNETES.rglob("*.yaml") if p != ADAPTER_VALUES)
OLDEST_VERSION = "1.27.0"
"""The oldest Kubernetes these manifests are checked for (autoscaling/v2 and policy/v1 are GA)."""
VERSIONS = [OLDEST_VERSION, kubernetes_validate.latest_version()]
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("serving.kserve.io/v1alpha1", "ServingRuntime"),
                ("serving.kserve.io/v1beta1", "InferenceService")}
Resource = dict[str, Any]
QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
"""Kubernetes' own pattern for a resource quantity; the schemas take any string there."""


def documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def resources() -> dict[tuple[str, str], Resource]:
    found: dict[tuple[str, str], Resource] = {}
    for path in MANIFESTS:
        for doc in documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


RESOURCES = resources()
DEPLOYMENTS = [r for (kind, _), r in RESOURCES.items() if kind == "Deployment"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container(deployment: Resource) -> Resource:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    result: Resource = only
    return result


def env(deployment: Resource) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def pod_security(deployment: Resource) -> Resource:
    """The security context the server's container runs with: the pod's, then the container's."""
    pod: Resource = deployment["spec"]["template"]["spec"]["securityContext"]
    merged = {k: v for k, v in pod.items() if k not in ("fsGroup", "supplementalGroups")}
    return {**merged, **container(deployment)["securityContext"]}


MANAGEMENT_PORT = 8002
"""Where the manifests serve the management API (BATCHSERVE_MANAGEMENT_PORT), apart from the API."""
GRPC_PORT = 8001
"""The gRPC port (the image's BATCHSERVE_GRPC_PORT, Triton's)."""


def test_the_expected_resources_are_there() -> None:
    assert set(RESOURCES) == {
        ("Deployment", "batchserve"), ("Service", "batchserve"), ("HorizontalPodAutoscaler", "batchserve"),
        ("PodDisruptionBudget", "batchserve"), ("ServiceMonitor", "batchserve"),
        ("Deployment", "batchserve-gpu"), ("ConfigMap", "batchserve-gpu-models"),
        ("HorizontalPodAutoscaler", "batchserve-gpu"),
        ("ServingRuntime", "batchserve"), ("InferenceService", "batchserve-demo"),
        ("InferenceService", "batchserve-demo-grpc"),
        ("NetworkPolicy", "batchserve"),
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in documents(path):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            # No schema for a CRD: say so, rather than pass silently.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        # strict: an unknown (misspelt) field is an error too.
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_deployment_probes_drain_and_resources(deployment: Resource) -> None:
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    expose = [int(port) for port in re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)]
    assert ports == {"http": expose[0], "grpc": GRPC_PORT, "management": MANAGEMENT_PORT}
    assert expose == [ports["http"], GRPC_PORT] and f"BATCHSERVE_GRPC_PORT={GRPC_PORT}" in dockerfile
    assert env(deployment)["BATCHSERVE_MANAGEMENT_PORT"] == str(MANAGEMENT_PORT)
    # readiness from the gRPC health service, which mirrors /readyz (a gRPC probe takes a number)
    assert main["readinessProbe"]["grpc"] == {"port": GRPC_PORT}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Drain: endpoints drop the pod during preStop, then SIGTERM gives the server its grace, and
    # only after both may the kubelet send SIGKILL.
    sleep_cmd = main["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "sleep"
    grace_s = float(env(deployment)["BATCHSERVE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > int(sleep_cmd[1]) + grace_s
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][kind])
        assert all(QUANTITY.match(str(q)) for q in main["resources"][kind].values()), main["resources"]
    assert any(m["mountPath"] == "/tmp" for m in main["volumeMounts"])
    assert pod["automountServiceAccountToken"] is False  # the server never calls the API server
    assert pod_security(deployment) == HARDENED


HARDENED = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
"""What every batchserve container runs with, wherever it is deployed."""


def test_gpu_variant_asks_for_a_gpu_and_serves_the_torch_models_on_cuda() -> None:
    gpu = RESOURCES[("Deployment", "batchserve-gpu")]
    resources = container(gpu)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert container(gpu)["image"].endswith(":cuda")
    [mount] = [m for m in container(gpu)["volumeMounts"] if m["mountPath"] == "/models/models.toml"]
    [volume] = [v for v in gpu["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = RESOURCES[("ConfigMap", volume["configMap"]["name"])]
    text = configmap["data"][mount["subPath"]]
    # The server's own loader validates it, as it would at start in the pod.
    configs = parse_models(tomllib.loads(text), source=Path("/models/models.toml"))
    devices = {c.name: c.device for c in configs}
    assert devices == {"diabetes": "cpu", "resnet50": "cuda", "sentiment": "cuda", "cancer": "cpu",
                       "minilm": "cuda"}
    # The same artifacts as the image's models.toml (built by the Dockerfile from models/).
    image = tomllib.loads((ROOT / "models" / "models.toml").read_text())["models"]
    assert {c.name: str(c.path) for c in configs} == {m["name"]: f"/models/{m['path']}" for m in image}


def test_service_pdb_and_servicemonitor_select_every_batchserve_pod() -> None:
    service = RESOURCES[("Service", "batchserve")]
    pdb = RESOURCES[("PodDisruptionBudget", "batchserve")]
    monitor = RESOURCES[("ServiceMonitor", "batchserve")]
    for deployment in DEPLOYMENTS:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(service["spec"]["selector"], labels)
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
        named_ports = {p["name"] for p in container(deployment)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    # The management port stays out of the Service (and so of any ingress in front of it).
    assert all(p["targetPort"] not in ("management", MANAGEMENT_PORT) for p in service["spec"]["ports"])
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("name", ["batchserve", "batchserve-gpu"])
def test_hpa_scales_its_deployment_on_the_adapters_queued_rows(name: str) -> None:
    hpa = RESOURCES[("HorizontalPodAutoscaler", name)]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) in RESOURCES
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert metric["pods"]["metric"]["name"] in {r["name"]["as"] for r in rules}
    assert "batchserve_queue_rows" in rules[0]["seriesQuery"]
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_pdb_leaves_a_pod_serving_while_one_is_evicted() -> None:
    pdb = RESOURCES[("PodDisruptionBudget", "batchserve")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert RESOURCES[("HorizontalPodAutoscaler", "batchserve")]["spec"]["minReplicas"] >= 2


def test_kserve_runtime_serves_the_v2_protocol_from_the_mounted_repository() -> None:
    runtime = RESOURCES[("ServingRuntime", "batchserve")]
    service = RESOURCES[("InferenceService", "batchserve-demo")]
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]  # REST and gRPC alike
    [server] = runtime["spec"]["containers"]
    assert server["name"] == "kserve-container"
    args = server["args"]
    assert args[args.index("--config") + 1] == "/mnt/models/models.toml"  # KServe's storage mount
    port = int(args[args.index("--port") + 1])
    [http] = server["ports"]  # KServe routes one port: HTTP, unless an InferenceService says gRPC
    assert http == {"containerPort": port, "protocol": "TCP"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["storageUri"].startswith(("pvc://", "s3://", "gs://", "https://"))


@pytest.mark.parametrize("version", VERSIONS)
def test_kserve_grpc_inferenceservice_routes_the_runtimes_grpc_port_and_probes_it(version: str) -> None:
    """The gRPC example is the REST one with KServe's gRPC port (named ``h2c``, as Knative reads
    HTTP/2 cleartext) and readiness from the gRPC health service on it; the container KServe makes
    of the runtime's with those fields over it passes the Pod schema."""
    runtime = RESOURCES[("ServingRuntime", "batchserve")]["spec"]
    [server] = runtime["containers"]
    args = server["args"]
    grpc_port = int(args[args.index("--grpc-port") + 1])
    assert grpc_port == GRPC_PORT and "grpc-v2" in runtime["protocolVersions"]
    grpc_spec = RESOURCES[("InferenceService", "batchserve-demo-grpc")]["spec"]["predictor"]
    rest_spec = RESOURCES[("InferenceService", "batchserve-demo")]["spec"]["predictor"]
    model = grpc_spec["model"]
    assert model["ports"] == [{"name": "h2c", "protocol": "TCP", "containerPort": grpc_port}]
    assert model["readinessProbe"] == {"grpc": {"port": grpc_port}}
    routed = {key: value for key, value in model.items() if key not in ("ports", "readinessProbe")}
    assert {**grpc_spec, "model": routed} == rest_spec  # the same model, runtime and storage
    assert server["livenessProbe"]["httpGet"]["port"] == int(args[args.index("--port") + 1])
    merged = {**server, "ports": model["ports"], "readinessProbe": model["readinessProbe"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "batchserve-kserve-grpc"},
           "spec": {"containers": [merged], "volumes": runtime["volumes"]}}
    kubernetes_validate.validate(pod, version, strict=True)


def test_network_policy_admits_the_api_from_the_cluster_and_management_from_admin_pods_only() -> None:
    policy = RESOURCES[("NetworkPolicy", "batchserve")]["spec"]
    for deployment in DEPLOYMENTS:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(policy["podSelector"]["matchLabels"], labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    allowed: dict[str, list[Resource]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), f"a rule without `from` admits every source: {rule}"
        for port in rule["ports"]:
            allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {"http", "grpc", "management"}
    assert allowed["http"] == [{"namespaceSelector": {}}]  # any pod of the cluster: clients, Prometheus
    assert allowed["grpc"] == [{"namespaceSelector": {}}]  # the gRPC clients likewise
    # Management: pods of this namespace with the admin label, nothing else.
    assert allowed["management"] == [{"podSelector": {"matchLabels": {"batchserve-admin": "true"}}}]
    monitor = RESOURCES[("ServiceMonitor", "batchserve")]
    [endpoint] = monitor["spec"]["endpoints"]
    service = RESOURCES[("Service", "batchserve")]
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert service_ports[endpoint["port"]] == "http"  # Prometheus scrapes the port the policy admits


@pytest.mark.parametrize("version", VERSIONS)
def test_kserve_runtime_runs_as_hardened_as_the_deployment(version: str) -> None:
    """The ServingRuntime's containers and volumes, as the Pod KServe makes of them, against the
    Pod schema (KServe's CRD schema is not available offline)."""
    runtime = RESOURCES[("ServingRuntime", "batchserve")]["spec"]
    [server] = runtime["containers"]
    assert server["securityContext"] == HARDENED == pod_security(RESOURCES[("Deployment", "batchserve")])
    [tmp] = [m for m in server["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in runtime["volumes"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "batchserve-kserve"},
           "spec": {"containers": runtime["containers"], "volumes": runtime["volumes"]}}
    kubernetes_validate.validate(pod, version, strict=True)
    # KServe leaves the pod Kubernetes' default of 30 s before SIGKILL: the drain must end before.
    grace_s = float({e["name"]: e["value"] for e in server["env"]}["BATCHSERVE_SHUTDOWN_GRACE_S"])
    assert grace_s < 30


DEMO_WORKER_BYTES = 3 * 2**29
"""1.5 GiB: what one worker serving the image's four demo models may hold. Measured: 1.1-1.2 GiB
resident per worker once warm on CPU, the supervisor 62 MiB (deploy/README.md, "Workers"); the rest
is a batch's activations. With CUDA loaded a worker holds more: this is a floor for the GPU pod."""
SUPERVISOR_BYTES = 2**27
UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", text)
    assert match and match.group(2) in UNITS, text
    return int(match.group(1)) * UNITS[match.group(2)]


def pod_models(deployment: Resource) -> str:
    """The models.toml the pod serves: a ConfigMap mounted over the image's, else the image's."""
    mounts = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == "/models/models.toml"]
    if not mounts:
        return (ROOT / "models" / "models.toml").read_text()
    [mount] = mounts
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    text: str = RESOURCES[("ConfigMap", volume["configMap"]["name"])]["data"][mount["subPath"]]
    return text


SERVERS = [*((d["metadata"]["name"], container(d)) for d in DEPLOYMENTS),
           ("kserve", RESOURCES[("ServingRuntime", "batchserve")]["spec"]["containers"][0])]


@pytest.mark.parametrize(("name", "server"), SERVERS, ids=[name for name, _ in SERVERS])
def test_workers_come_from_the_cpu_limit_which_the_pod_is_guaranteed(name: str, server: Resource) -> None:
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    assert re.search(r"^ENV .*\bBATCHSERVE_WORKERS=auto\b", dockerfile, re.MULTILINE)
    variables = {e["name"]: e for e in server["env"]}
    # auto, the image's default: from the cgroup quota Kubernetes makes of limits.cpu.
    assert variables.get("BATCHSERVE_WORKERS", {"value": "auto"}) == {"name": "BATCHSERVE_WORKERS",
                                                                       "value": "auto"}
    resources = server["resources"]
    # The workers are sized to the limit: the request guarantees those cores, whole ones.
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    assert re.fullmatch(r"[1-9][0-9]*", resources["limits"]["cpu"])
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["metadata"]["name"])
def test_memory_holds_a_copy_of_the_models_per_worker(deployment: Resource) -> None:
    from batchserve.cluster.cores import auto_workers

    configs = parse_models(tomllib.loads(pod_models(deployment)), source=Path("/models/models.toml"))
    limits = container(deployment)["resources"]["limits"]
    workers = auto_workers(configs, int(limits["cpu"]))  # what the image's auto runs in this pod
    assert workers >= 2  # the point of the cores: more than one worker
    assert quantity_bytes(limits["memory"]) >= workers * DEMO_WORKER_BYTES + SUPERVISOR_BYTES
