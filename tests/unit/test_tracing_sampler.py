"""Tracing's sampler from the standard variables, and the root decision ``Tracing.begin`` makes
before any span exists: it must be the sampler's own decision, for every sampler the
specification names."""

from __future__ import annotations

import random

import pytest
from batchserve.tracing import SAMPLERS, sampler_from_env
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import SpanKind

LOW_64 = (1 << 64) - 1


def decides(sampler: Sampler, trace_id: int) -> bool:
    decision = sampler.should_sample(None, trace_id, "POST /predict", SpanKind.SERVER).decision
    return decision is Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("ratio", ["0", "0.01", "0.5", "1"])
def test_the_root_decision_is_the_samplers(monkeypatch: pytest.MonkeyPatch, name: str, ratio: str) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    sampler, bound = sampler_from_env()
    draw = random.Random(7)
    edges = [1 << 64 | low for low in {0, 1, max(bound - 1, 0), min(bound, LOW_64), LOW_64}]
    for trace_id in edges:  # the low 64 bits at the bound's edges
        expected = decides(sampler, trace_id)
        assert ((trace_id & LOW_64) < bound) == expected, (name, ratio, hex(trace_id))
    sampled = 0
    for _ in range(4000):
        trace_id = draw.getrandbits(128) or 1
        expected = decides(sampler, trace_id)
        assert ((trace_id & LOW_64) < bound) == expected, (name, ratio, hex(trace_id))
        sampled += expected
    if name.endswith("always_on") or (name.endswith("ratio") and ratio == "1"):
        assert sampled == 4000
    elif name.endswith("always_off") or ratio == "0":
        assert sampled == 0
    elif ratio == "0.5":
        assert 1800 < sampled < 2200


def test_an_unknown_sampler_or_ratio_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER='sometimes' is not supported"):
        sampler_from_env()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    for raw in ("1.5", "-0.1", "half"):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", raw)
        with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1"):
            sampler_from_env()
