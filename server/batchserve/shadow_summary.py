"""The management summary of a model's shadow comparisons, from the metrics ``/metrics`` shows
(the whole server's, whichever worker answers) and the worst items each worker kept."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

_PREFIX = "batchserve_shadow_"
_MEANS = {  # histogram -> (the part of the summary, the name of its mean)
    "abs_diff": ("regression", "mean_abs_diff"),
    "rel_diff": ("regression", "mean_rel_diff"),
    "label_agreement": ("classification", "agreement"),
    "probability_shift": ("classification", "mean_probability_shift"),
    "cosine": ("embedding", "mean_cosine"),
}


def summarise(families: Iterable[Metric], name: str,
              worst: Worst) -> dict[str, Any]:
    """Per ``"primary->shadow"`` pair of ``name``'s versions: its copies by outcome, the items
    compared of each output kind and the means of their differences, and its worst items."""
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    pairs: dict[str, dict[str, Any]] = {}
    for family in families:
        if not family.name.startswith(_PREFIX):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != name:
                continue
            pair = f"{labels['primary']}->{labels['shadow']}"
            entry = pairs.setdefault(pair, {"copies": {"compared": 0, "dropped": 0, "failed": 0}})
            if sample.name == "batchserve_shadow_copies_total":
                entry["copies"][labels["outcome"]] = int(sample.value)
            elif sample.name.endswith("_sum"):
                sums[(pair, sample.name[len(_PREFIX):-len("_sum")])] = sample.value
            elif sample.name.endswith("_count"):
                counts[(pair, sample.name[len(_PREFIX):-len("_count")])] = sample.value
    for (pair, histogram), count in counts.items():
        if not count or histogram not in _MEANS:
            continue
        part, mean = _MEANS[histogram]
        kind = pairs[pair].setdefault(part, {"items": int(count)})
        kind[mean] = sums.get((pair, histogram), 0.0) / count
    for pair, entry in pairs.items():
        entry["worst"] = worst.get(pair, [])
    return {"name": name, "pairs": pairs}


Worst = dict[str, list[dict[str, Any]]]
"""``"primary->shadow"`` -> the worst items seen, the worst first."""


def merge_worst(parts: Iterable[Worst], kept: int) -> Worst:
    """The worst items of several workers, the ``kept`` worst of each pair."""
    merged: Worst = {}
    for part in parts:
        for pair, items in part.items():
            merged.setdefault(pair, []).extend(items)
    return {pair: sorted(items, key=lambda w: -w["score"])[:kept] for pair, items in merged.items()}
