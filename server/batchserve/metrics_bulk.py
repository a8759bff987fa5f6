"""Histograms observed in bulk, with prometheus-client's public API only.

A request observes eight latencies (its duration, its six stages, its queue wait): at ~1 us an
``observe`` (a lock per bucket and sum written), that was a sixth of a small request's cost. So a
``BulkHistogram`` counts its values into buckets in plain lists on the hot path (~0.2 us), and its
owner ``flush``es them, once an event loop turn or a batch, into two prometheus-client Counters:
``<name>_bulk_hits`` (per bucket, labelled ``le``, not cumulative) and ``<name>_bulk_sum``: one
``inc`` per bucket touched. Counters are what prometheus-client sums over worker processes
(multiprocess mode) like any other; ``as_histograms`` turns the two back into the histogram
``<name>`` (cumulative ``_bucket``, ``_count``, ``_sum``) when ``/metrics`` is rendered, so a
scrape sees ordinary histograms. Values reach the counters by the end of the loop turn (or the
batch) that observed them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

_HITS = "_bulk_hits"
_SUM = "_bulk_sum"


class BulkHistogram:
    """A histogram family whose children are observed in bulk (``BulkChild``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.bounds = [float(b) for b in buckets if b != math.inf] + [math.inf]
        self.hits = Counter(name + _HITS, documentation, [*labelnames, "le"], registry=registry)
        self.sums = Counter(name + _SUM, documentation, labelnames, registry=registry)

    def labels(self, *values: str) -> BulkChild:
        return BulkChild(self, values)


class BulkChild:
    """One labelled series: ``observe`` on the hot path, ``flush`` by its owner."""

    __slots__ = ("_counts", "_hits", "_sum", "_total", "bounds")

    def __init__(self, family: BulkHistogram, values: tuple[str, ...]) -> None:
        self.bounds = family.bounds
        self._counts = [0] * len(self.bounds)
        self._total = 0.0
        # every bucket's series exists, at zero, from now on, as a histogram's does
        self._hits = [family.hits.labels(*values, "+Inf" if bound == math.inf else repr(bound))
                      for bound in self.bounds]
        self._sum = family.sums.labels(*values)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self._total += value

    def observe_all(self, values: Iterable[float]) -> None:
        """``observe`` each of ``values`` (one call for a column of them)."""
        counts, bounds = self._counts, self.bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self._total += total

    def flush(self) -> None:
        """Add what was observed since the last flush to the counters behind the series."""
        counts = self._counts
        for index, count in enumerate(counts):
            if count:
                self._hits[index].inc(count)
                counts[index] = 0
        if self._total:
            self._sum.inc(self._total)
            self._total = 0.0


def as_histograms(families: Iterable[Metric]) -> list[Metric]:
    """``families`` with each bulk histogram's two counter families turned back into one
    histogram family (any other family as it is), as ``/metrics`` shows them: the empty
    ``version`` label of a model without versions left out (``without_empty_version``)."""
    families = [without_empty_version(family) for family in families]
    by_name = {family.name: family for family in families}
    out = []
    for family in families:
        if family.name.endswith(_SUM) and family.name[:-len(_SUM)] + _HITS in by_name:
            continue  # folded into its histogram below
        if not family.name.endswith(_HITS):
            out.append(family)
            continue
        name = family.name[:-len(_HITS)]
        out.append(_histogram(name, family, by_name.get(name + _SUM)))
    return out


def without_empty_version(family: Metric) -> Metric:
    """``family`` with its samples' empty ``version`` label left out: a model without versions
    shows the series it showed before versions (Prometheus reads an empty label as none)."""
    if any(s.labels.get("version") == "" for s in family.samples):
        family.samples = [s._replace(labels={k: v for k, v in s.labels.items() if k != "version"})
                          if s.labels.get("version") == "" else s for s in family.samples]
    return family


def _histogram(name: str, hits: Metric, sums: Metric | None) -> Metric:
    series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    totals: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in _totals(sums):
        key = tuple(sorted(sample.labels.items()))
        totals[key] = sample.value
        series.setdefault(key, {})
    for sample in _totals(hits):
        labels = dict(sample.labels)
        le = labels.pop("le")
        counts = series.setdefault(tuple(sorted(labels.items())), {})
        counts[le] = counts.get(le, 0.0) + sample.value
    bounds = sorted({le for counts in series.values() for le in counts} | {"+Inf"}, key=float)
    histogram = Metric(name, hits.documentation, "histogram")
    for key, counts in series.items():
        labels = dict(key)
        running = 0.0
        for le in bounds:
            running += counts.get(le, 0.0)
            histogram.add_sample(name + "_bucket", {**labels, "le": le}, running)
        histogram.add_sample(name + "_count", labels, running)
        histogram.add_sample(name + "_sum", labels, totals.get(key, 0.0))
    return histogram


def _totals(family: Metric | None) -> Iterator[Sample]:
    if family is None:
        return iter(())
    return (s for s in family.samples if s.name.endswith("_total"))


class Histograms(Collector):
    """``source``'s families, bulk histograms shown as histograms (``/metrics`` of one process)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return as_histograms(self._source.collect())
