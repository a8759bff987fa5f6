"""Where a request's time went, server side, and which knob that points at: the view Triton's
perf_analyzer gives (queue, compute input, compute infer, compute output), from the stage
histograms batchserve exports (``batchserve_stage_duration_seconds``; ``load/scrape.py`` reads
their means over a measurement)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ADVICE = {
    "body": "reading request bodies: the event loop's HTTP work. More `workers` (processes) spread "
            "it over more cores; smaller requests (binary v2 tensors, not JSON) shorten it.",
    "decode": "decoding request bodies (JSON, base64) on the event loop. More `workers` spread it over "
              "more cores; binary v2 tensors skip most of it.",
    "compute_input": "preprocessing (image decoding, tokenizing). Raise `preprocess_concurrency` "
                     "(threads that preprocess at once) if cores are idle, or add `workers`.",
    "queue": "waiting for a batch: the model is the bottleneck. Raise `instances` (batches run at "
             "once) if cores are idle, or add `workers` or replicas; `max_wait_ms` adds at most its "
             "value here, so lower it if the batches leave before they fill.",
    "compute_infer": "the model's own compute. A larger `max_batch_size` raises throughput if the p99 "
                     "allows it; a faster device or a smaller model shortens it; more `instances` "
                     "only help while cores are idle.",
    "compute_output": "encoding answers (JSON) on the event loop. More `workers` spread it over more "
                      "cores; binary v2 outputs are cheaper to encode.",
}
"""For the stage that takes the most of a request's time: what it is, and the knob it points at."""


def dominant(stages_ms: Mapping[str, float]) -> str | None:
    """The stage that took the most time (``None`` when none took any)."""
    if not stages_ms or max(stages_ms.values()) <= 0:
        return None
    return max(stages_ms, key=lambda stage: stages_ms[stage])


def breakdown_section(stages_ms: Mapping[str, float] | None, where: str) -> list[str]:
    """A report's markdown lines: the mean time of a successful request in each stage, its
    share, and the knob the largest stage points at; nothing when no stage was measured."""
    if not stages_ms:
        return []
    total = sum(stages_ms.values())
    stage = dominant(stages_ms)
    if stage is None or total <= 0:
        return []
    lines = [f"### Where a request's time went ({where})", "",
             "Server side, mean of the successful requests, from `batchserve_stage_duration_seconds` "
             "(Triton's names):", "",
             "| " + " | ".join(stages_ms) + " | all |", "|" + "---|" * (len(stages_ms) + 1),
             "| " + " | ".join(f"{value:.2f} ms ({value / total:.0%})" for value in stages_ms.values())
             + f" | {total:.2f} ms |", "",
             f"Most of it is **{stage}**: {ADVICE.get(stage, 'no advice for this stage.')}", ""]
    return lines


def stages_of(step: Mapping[str, Any] | None) -> dict[str, float] | None:
    """A measured step's stage means (a results file's ``stages_ms``), if it has them."""
    if not step:
        return None
    stages = step.get("stages_ms")
    return dict(stages) if stages else None
