"""One measured load run, as ``loadtest`` and ``recommend`` make it: the load of a spec with a
progress bar, summarized, with the server's mean batch size over the window from ``/metrics``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from batchserve_planning.load.generator import run_load
from batchserve_planning.load.progress import Bars
from batchserve_planning.load.scrape import Counters, mean_batch, server_counters, stage_means_ms

if TYPE_CHECKING:
    from batchserve_planning.load.results import Summary
    from batchserve_planning.load.shared import LoadSpec


def measure(spec: LoadSpec, base_url: str, model: str, rows_per_request: int, *, processes: int = 1,
            cpus: set[int] | None = None, progress: bool = True, bars: Bars | None = None,
            label: str | None = None, windows: int = 1) -> Summary:
    """Run ``spec`` with a progress bar (on ``bars`` if given) and return its ``Summary``,
    with the mean batch size and where a request's time went (server side), read from
    ``/metrics`` over the window, and the figures of each of ``windows`` equal parts of it."""
    from batchserve_planning.load.results import summarize  # numpy: only when a run is summarized

    before: list[Counters] = []
    with contextlib.ExitStack() as stack:
        if bars is None:
            bars = stack.enter_context(Bars(progress))
        what = f"{spec.concurrency} clients" if spec.mode == "closed" else f"{spec.rate:g}/s"
        task = bars.add(label or f"{model} @ {what}", spec.count or spec.duration_s)
        stack.callback(bars.remove, task)
        run = run_load(spec, processes=processes, cpus=cpus,
                       on_progress=bars.load_callback(task, spec.duration_s, spec.count),
                       on_measure_start=lambda: before.append(server_counters(base_url, model)))
    after = server_counters(base_url, model)
    first = before[0] if before else None
    return summarize(run, rows_per_request, windows).with_server(mean_batch(first, after),
                                                        stage_means_ms(first, after))
