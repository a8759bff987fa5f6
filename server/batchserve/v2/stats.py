"""Triton's statistics extension: ``GET /v2/models[/{name}[/versions/1]]/stats``.

Read from the metrics ``/metrics`` shows (``batchserve/metrics.py``), so with worker processes
they are the whole server's, summed over every worker (``metrics_multiprocess.read_metrics``),
whichever worker answers. What they hold:

- ``inference_count``: rows run (``batchserve_batch_size_sum``); ``execution_count``: batches
  (``batchserve_batch_size_count``);
- ``inference_stats.success``: 200 answers and their end-to-end time; ``fail``: every other answer,
  counted (its ``ns`` is 0: failures are not timed); ``queue``, ``compute_input``,
  ``compute_infer``, ``compute_output``: the successful requests' time in those stages;
- ``last_inference``, the cache's counts and ``batch_stats`` are not tracked: 0 and empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
"""The stages of ``batchserve.metrics.STAGES`` Triton reports, under the same names."""

Values = dict[tuple[str, str], dict[frozenset[tuple[str, str]], float]]
"""(sample name, model) -> that sample's value for each set of its other labels."""


def model_stats(families: Iterable[Metric], names: Iterable[str], version: str,
                only: str | None = None) -> list[dict[str, Any]]:
    """Each model's statistics in Triton's shape (``{"model_stats": <this>}``), in ``names``' order;
    of its version ``only`` where given, else of all its versions together."""
    values = _by_model(families, only)
    return [_stats(values, name, version) for name in names]


def _by_model(families: Iterable[Metric], only: str | None) -> Values:
    values: Values = {}
    for family in families:
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None or (only is not None and sample.labels.get("version", only) != only):
                continue
            rest = frozenset((k, v) for k, v in sample.labels.items() if k not in ("model", "version"))
            series = values.setdefault((sample.name, model), {})
            series[rest] = series.get(rest, 0.0) + sample.value  # a model's versions add up
    return values


def _stats(values: Values, name: str, version: str) -> dict[str, Any]:
    def value(sample: str, **labels: str) -> float:
        return values.get((sample, name), {}).get(frozenset(labels.items()), 0.0)

    def duration(family: str, **labels: str) -> dict[str, int]:
        return {"count": int(value(f"{family}_count", **labels)),
                "ns": round(value(f"{family}_sum", **labels) * 1e9)}

    answers = values.get(("batchserve_requests_total", name), {})
    failed = sum(count for labels, count in answers.items() if dict(labels).get("code") != "200")
    none = {"count": 0, "ns": 0}
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": int(value("batchserve_batch_size_sum")),
        "execution_count": int(value("batchserve_batch_size_count")),
        "inference_stats": {
            "success": {"count": int(value("batchserve_requests_total", code="200")),
                        "ns": duration("batchserve_request_duration_seconds")["ns"]},
            "fail": {"count": int(failed), "ns": 0},
            **{stage: duration("batchserve_stage_duration_seconds", stage=stage) for stage in _STAGES},
            "cache_hit": none,
            "cache_miss": none,
        },
        "batch_stats": [],
    }
