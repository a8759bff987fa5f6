"""Shadow traffic: a fraction of the requests a model's primary versions answered is also run on
a shadow version, and the outputs compared (``shadow_compare.py``), after the answer is sent.

A copy never delays or fails the request it copies: it is started as a task once the response is
made, and whatever happens to it (the shadow's queue full, its error, its deadline) is counted,
never raised. Its queue is its own and bounded: the copies of one shadow in flight hold at most
its ``max_queue`` rows; a copy beyond that is dropped and counted (``outcome="dropped"``), and so
is one its batcher refuses. Metrics per (model, primary, shadow) version pair:

- ``batchserve_shadow_copies_total{outcome}``: compared, dropped, failed;
- regression: ``batchserve_shadow_abs_diff``, ``batchserve_shadow_rel_diff`` (histograms);
- classification: ``batchserve_shadow_label_agreement`` (a histogram of 0 and 1: its sum over
  its count is the agreement) and ``batchserve_shadow_probability_shift``;
- embeddings: ``batchserve_shadow_cosine``.

The worst items seen (the largest differences) are kept per process, a few per pair, for the
management summary (``routing_api.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool

from batchserve.errors import BatchserveError, Unavailable
from batchserve.preprocessing import preprocess_items
from batchserve.registry import ServedModel
from batchserve.routing import Router
from batchserve.shadow_compare import ItemDiff, compare

log = logging.getLogger(__name__)

OUTCOMES = ("compared", "dropped", "failed")
WORST_KEPT = 5
"""Worst items kept per (primary, shadow) pair, per process."""
SHOWN_CHARS = 200
"""Of an output shown among the worst items (an embedding is long)."""
INLINE_ITEMS = 8
"""Copies of more items than this are compared on a worker thread (an embedding's cosine costs
a few microseconds; the event loop's budget is ~1 ms)."""
_PAIR = ["model", "primary", "shadow"]


class ShadowMetrics:
    """The comparison families, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.copies = Counter("batchserve_shadow_copies", "Copies of answered requests sent to a "
                              "shadow version, by outcome (compared, dropped: its queue full, failed).",
                              [*_PAIR, "outcome"], registry=r)
        self.abs_diff = Histogram("batchserve_shadow_abs_diff", "Regression: |primary - shadow| per item.",
                                  _PAIR, buckets=(0, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 1, 10, 100, 1000),
                                  registry=r)
        self.rel_diff = Histogram("batchserve_shadow_rel_diff", "Regression: |primary - shadow| / "
                                  "|primary| per item.", _PAIR,
                                  buckets=(0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2),
                                  registry=r)
        self.agreement = Histogram("batchserve_shadow_label_agreement", "Classification: 1 when the "
                                   "shadow's label is the primary's, else 0, per item (sum/count: the "
                                   "agreement).", _PAIR, buckets=(0, 1), registry=r)
        self.shift = Histogram("batchserve_shadow_probability_shift", "Classification: the largest "
                               "change of one class's probability per item.", _PAIR,
                               buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1), registry=r)
        # No bucket below 0: prometheus_client leaves out the _sum of a histogram that has one,
        # and the mean cosine is its sum over its count (a negative cosine counts in le=0).
        self.cosine = Histogram("batchserve_shadow_cosine", "Embeddings: cosine similarity of the "
                                "shadow's vector to the primary's, per item.", _PAIR,
                                buckets=(0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1),
                                registry=r)

    def observe(self, pair: tuple[str, str, str], diff: ItemDiff) -> None:
        if diff.kind == "regression":
            self.abs_diff.labels(*pair).observe(diff.abs_diff)
            self.rel_diff.labels(*pair).observe(diff.rel_diff)
        elif diff.kind == "classification":
            self.agreement.labels(*pair).observe(1.0 if diff.agreed else 0.0)
            self.shift.labels(*pair).observe(diff.shift)
        elif diff.kind == "embedding":
            self.cosine.labels(*pair).observe(diff.cosine)


@dataclass
class _Pair:
    """One (primary, shadow) pair's copies in flight and worst items, in this process."""

    rows_in_flight: int = 0
    worst: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def keep(self, diff: ItemDiff, primary: Any, shadow: Any) -> None:
        if diff.kind == "other" or (len(self.worst) >= WORST_KEPT and diff.score <= self.worst[-1][0]):
            return
        shown = {"kind": diff.kind, "score": diff.score, "primary": _shown(primary),
                 "shadow": _shown(shadow), "at": time.time()}
        self.worst = sorted([*self.worst, (diff.score, shown)], key=lambda w: -w[0])[:WORST_KEPT]


class Shadows:
    """Sends copies of answered requests to the shadows their model's routing names."""

    def __init__(self, router: Router, registry: CollectorRegistry) -> None:
        self.router = router
        self.metrics = ShadowMetrics(registry)
        self._pairs: dict[tuple[str, str, str], _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()

    def after(self, primary: ServedModel, items: list[Any], parameters: Mapping[str, Any],
              outputs: list[Any]) -> None:
        """``primary`` answered ``outputs`` to ``items``: copy them to its model's shadows, each
        with its fraction's chance. Returns at once (tasks run the copies)."""
        config = primary.config
        routing = self.router.routing(config.name)
        if routing is None or not routing.shadows or config.version is None:
            return
        for version, fraction in routing.shadows:
            if version == config.version or self._random.random() >= fraction:
                continue
            key = (config.name, config.version, version)
            pair = self._pairs.setdefault(key, _Pair())
            shadow = self.router.registry.get_version(config.name, version)
            if (shadow is None or not shadow.ready
                    or pair.rows_in_flight + len(items) > shadow.config.max_queue):
                self.metrics.copies.labels(*key, "dropped").inc()
                continue
            pair.rows_in_flight += len(items)
            task = asyncio.create_task(self._copy(key, pair, shadow, items, parameters, outputs),
                                       name=f"shadow-{shadow.config.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, key: tuple[str, str, str], pair: _Pair, shadow: ServedModel,
                    items: list[Any], parameters: Mapping[str, Any], outputs: list[Any]) -> None:
        outcome = "failed"
        try:
            backend = shadow.backend
            parsed = backend.parse_parameters(parameters)
            if backend.preprocess_in_thread or len(items) > INLINE_ITEMS:
                rows = await run_in_threadpool(preprocess_items, backend, items, parsed, None)
            else:
                rows = preprocess_items(backend, items, parsed, None)
            answers = await shadow.batcher.infer(rows, timeout_s=shadow.config.timeout_ms / 1000)
            if len(answers) > INLINE_ITEMS:
                diffs = await run_in_threadpool(_compare_all, outputs, answers)
            else:
                diffs = _compare_all(outputs, answers)
            for diff, mine, theirs in zip(diffs, outputs, answers, strict=True):
                self.metrics.observe(key, diff)
                pair.keep(diff, mine, theirs)
            outcome = "compared"
        except Unavailable:  # its queue full (or it is shutting down): the copy is dropped
            outcome = "dropped"
        except BatchserveError as exc:
            log.debug("shadow copy to %s failed: %s", shadow.config.key, exc.message)
        except Exception:
            log.warning("shadow copy to %s failed", shadow.config.key, exc_info=True)
        finally:
            pair.rows_in_flight -= len(items)
            self.metrics.copies.labels(*key, outcome).inc()

    def worst(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """``name``'s worst items seen in this process, by ``"primary->shadow"`` pair."""
        return {f"{primary}->{shadow}": [w for _, w in pair.worst]
                for (model, primary, shadow), pair in self._pairs.items() if model == name and pair.worst}

    async def close(self) -> None:
        """Cancel the copies still in flight (the server is stopping: they answer no one)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _compare_all(outputs: list[Any], answers: list[Any]) -> list[ItemDiff]:
    return [compare(mine, theirs) for mine, theirs in zip(outputs, answers, strict=True)]


def _shown(output: Any) -> str:
    text = orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
