"""What the planning commands read from a running server: readiness, ``/models`` and ``/metrics``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ServerError(RuntimeError):
    """The server cannot be used for the measurement; the message says why."""


def get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` (loopback only in practice); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def model_state(base_url: str, model: str) -> dict[str, Any]:
    """``GET /models/{model}``; raises ``ServerError`` when unreachable or unknown."""
    return get_json(base_url, f"/models/{model}")


def model_metadata(base_url: str, model: str) -> dict[str, Any]:
    """``GET /v2/models/{model}``: its v2 input and output tensors; ``ServerError`` if unreachable."""
    return get_json(base_url, f"/v2/models/{model}")


def get_json(base_url: str, path: str) -> dict[str, Any]:
    """The JSON object at ``path``; ``ServerError`` when unreachable or not a 200."""
    try:
        status, body = get(f"{base_url}{path}")
    except OSError as exc:
        raise ServerError(f"cannot reach {base_url}: {exc}") from None
    if status != 200:
        raise ServerError(f"{base_url}{path} answered {status}: {body[:300]!r}")
    found: dict[str, Any] = json.loads(body)
    return found


def wait_ready(url: str, timeout_s: float, alive: Callable[[], bool] | None = None,
               interval_s: float = 0.05) -> None:
    """Poll ``url`` (a server's ``/readyz``, say) until it answers 200; raises ``ServerError``
    after ``timeout_s``, or as soon as ``alive()`` returns False (the process behind it exited).
    The one readiness poller of the planner, the tests and the benchmarks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ServerError(f"the server exited before {url} answered 200")
        try:
            if get(url, timeout_s=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(interval_s)
    raise ServerError(f"{url} did not answer 200 within {timeout_s:g} s")


STAGES = ("body", "decode", "compute_input", "queue", "compute_infer", "compute_output")
"""The server's request stages (``batchserve_stage_duration_seconds{stage}``), in order; named here
as on the wire, since this package's load half imports nothing from the server."""


@dataclass(frozen=True, slots=True)
class Counters:
    """What ``/metrics`` says of one model so far: rows and batches run, and for each stage the
    seconds successful requests spent in it and how many they were."""

    rows: float = 0.0
    batches: float = 0.0
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)


def server_counters(base_url: str, model: str) -> Counters:
    """``batchserve_batch_size`` and ``batchserve_stage_duration_seconds`` for ``model`` (all
    its versions; one version of it, written ``name:version``)."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = get(f"{base_url}/metrics")
    rows = batches = 0.0
    stages: dict[str, list[float]] = {}
    model, _, version = model.partition(":")
    for family in text_string_to_metric_families(body.decode()):
        if family.name not in ("batchserve_batch_size", "batchserve_stage_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model or (version and sample.labels.get("version") != version):
                continue
            if family.name == "batchserve_batch_size":
                if sample.name.endswith("_sum"):
                    rows = sample.value
                elif sample.name.endswith("_count"):
                    batches = sample.value
            elif sample.name.endswith(("_sum", "_count")):
                pair = stages.setdefault(sample.labels.get("stage", ""), [0.0, 0.0])
                pair[0 if sample.name.endswith("_sum") else 1] = sample.value
    return Counters(rows, batches, {stage: (pair[0], pair[1]) for stage, pair in stages.items()})


def mean_batch(before: Counters | None, after: Counters | None) -> float | None:
    """Rows per batch between two readings of ``server_counters``."""
    if before is None or after is None:
        return None
    batches = after.batches - before.batches
    return (after.rows - before.rows) / batches if batches > 0 else None


def stage_means_ms(before: Counters | None, after: Counters | None) -> dict[str, float] | None:
    """Mean milliseconds a successful request spent in each stage between two readings of
    ``server_counters``; ``None`` when no request succeeded between them (or the server is one
    that does not time its stages)."""
    if before is None or after is None:
        return None
    means = {}
    for stage in STAGES:
        seconds, count = after.stages.get(stage, (0.0, 0.0))
        seconds_then, count_then = before.stages.get(stage, (0.0, 0.0))
        if count - count_then <= 0:
            return None
        means[stage] = 1000 * (seconds - seconds_then) / (count - count_then)
    return means
