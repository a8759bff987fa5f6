"""recommend's breakdown of a request's time by stage, and the knob the largest stage points at."""

from __future__ import annotations

from batchserve.metrics import STAGES
from batchserve_planning.stages import ADVICE, breakdown_section, dominant


def test_every_stage_has_advice() -> None:
    assert set(ADVICE) == set(STAGES)


def test_the_largest_stage_names_its_knob() -> None:
    stages = {"body": 0.05, "decode": 0.02, "compute_input": 4.0, "queue": 1.0, "compute_infer": 2.0,
              "compute_output": 0.03}
    assert dominant(stages) == "compute_input"
    lines = breakdown_section(stages, "the pick")
    text = "\n".join(lines)
    assert lines[0] == "### Where a request's time went (the pick)"
    assert "| 0.05 ms (1%) | 0.02 ms (0%) | 4.00 ms (56%) | 1.00 ms (14%) | 2.00 ms (28%) |" in text
    assert "| 7.10 ms |" in text
    assert "Most of it is **compute_input**" in text and "`preprocess_concurrency`" in text
    queued = {**stages, "queue": 9.0}
    assert dominant(queued) == "queue"
    assert "`instances`" in "\n".join(breakdown_section(queued, "the pick"))


def test_nothing_measured_is_no_section() -> None:
    assert breakdown_section(None, "x") == [] and breakdown_section({}, "x") == []
    assert breakdown_section(dict.fromkeys(STAGES, 0.0), "x") == []
    assert dominant(dict.fromkeys(STAGES, 0.0)) is None
