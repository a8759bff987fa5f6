"""What the planning commands read from a running server: readiness, ``/models`` and ``/metrics``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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
    try:
        status, body = get(f"{base_url}/models/{model}")
    except OSError as exc:
        raise ServerError(f"cannot reach {base_url}: {exc}") from None
    if status != 200:
        raise ServerError(f"{base_url}/models/{model} answered {status}: {body[:300]!r}")
    state: dict[str, Any] = json.loads(body)
    return state


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


def batch_counters(base_url: str, model: str) -> tuple[float, float]:
    """``batchserve_batch_size`` sum and count for ``model``: rows and batches so far."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = get(f"{base_url}/metrics")
    rows = batches = 0.0
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "batchserve_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                rows = sample.value
            elif sample.name.endswith("_count"):
                batches = sample.value
    return rows, batches


def mean_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Rows per batch between two readings of ``batch_counters``."""
    if before is None or after is None:
        return None
    batches = after[1] - before[1]
    return (after[0] - before[0]) / batches if batches > 0 else None
