"""A shadow's outputs compared with the primary's by kind, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
from batchserve.backends.kinds import Embedding
from batchserve.shadow import ShadowMetrics
from batchserve.shadow_compare import compare
from batchserve.shadow_summary import summarise
from prometheus_client import CollectorRegistry


def test_regression_absolute_and_relative() -> None:
    diff = compare(200.0, 190.0)
    assert (diff.kind, diff.abs_diff, diff.rel_diff) == ("regression", 10.0, 0.05)
    assert compare([4], [5]).abs_diff == 1.0  # a list of one number is a number
    assert compare(0.0, 1.0).rel_diff == math.inf and compare(0.0, 0.0).rel_diff == 0.0


def test_classification_agreement_and_shift() -> None:
    same = compare({"label": "a", "scores": {"a": 0.7, "b": 0.3}},
                   {"label": "a", "scores": {"a": 0.6, "b": 0.4}})
    assert (same.kind, same.agreed) == ("classification", True)
    assert same.shift == pytest.approx(0.1)
    other = compare({"label": "a", "scores": {"a": 0.6, "b": 0.4}},
                    {"label": "b", "scores": {"a": 0.2, "b": 0.8}})
    assert other.agreed is False
    assert other.shift == pytest.approx(0.4)
    top_k = compare([{"label": "cat", "probability": 0.9}, {"label": "dog", "probability": 0.1}],
                    [{"label": "dog", "probability": 0.5}, {"label": "cat", "probability": 0.4}])
    assert (top_k.kind, top_k.agreed) == ("classification", False)
    assert top_k.shift == pytest.approx(0.5)


def test_embeddings_cosine() -> None:
    assert compare(Embedding([1.0, 0.0], 2), Embedding([0.0, 2.0], 2)).cosine == 0.0
    assert compare([3.0, 4.0], [6.0, 8.0]).cosine == pytest.approx(1.0)
    assert compare([1.0, 0.0], [-1.0, 0.0]).cosine == pytest.approx(-1.0)


def test_other_shapes_are_not_compared() -> None:
    assert compare("text", "text").kind == "other"
    assert compare([1.0, 2.0], [1.0, 2.0, 3.0]).kind == "other"
    assert compare(1.0, {"label": "a"}).kind == "other"


def test_the_summarys_means_are_the_observed_items_means() -> None:
    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    pair = ("m", "1", "2")
    cosines = [1.0, 0.5, -0.25]  # a vector turned away counts too
    for cosine in cosines:
        metrics.observe(pair, compare([1.0, 0.0], [cosine, math.sqrt(1 - cosine**2)]))
    for primary, shadow in ((200.0, 190.0), (10.0, 13.0)):
        metrics.observe(pair, compare(primary, shadow))
    summary = summarise(registry.collect(), "m", {})["pairs"]["1->2"]
    assert summary["embedding"] == {"items": 3, "mean_cosine": pytest.approx(sum(cosines) / 3)}
    assert summary["regression"]["mean_abs_diff"] == pytest.approx(6.5)
