"""From a run's records to figures: throughput, latency percentiles, counts by status."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from batchserve_planning.load.client import describe_status
from batchserve_planning.load.generator import Run
from batchserve_planning.stability import Window


@dataclass(frozen=True)
class Summary:
    """What a load run measured. Latency counts from a request's arrival (open loop) or send."""

    mode: str
    concurrency: int
    rate: float
    processes: int
    rows_per_request: int
    window_s: float
    """Length of the measurement window (warm-up excluded)."""
    requests: int
    """Requests that started in the window (their answers may come after it)."""
    throughput_rps: float
    """Responses of any status received in the window, per second."""
    ok_rps: float
    """2xx responses received in the window, per second."""
    rows_per_s: float
    latency_ms: dict[str, float]
    """p10, p50, p90, p99, max and mean over the requests that started in the window."""
    status_counts: dict[str, int]
    error_rate: float
    """Share of the window's requests not answered 2xx (errors and timeouts included)."""
    error_examples: dict[str, str]
    send_lag_ms: dict[str, float]
    """Open loop: how late requests were sent after their arrival (the generator keeping up)."""
    max_backlog: int
    """Open loop: most arrivals waiting for a free connection at once."""
    mean_batch_size: float | None = None
    """From the server's ``/metrics`` over the window, when the caller read them."""
    stages_ms: dict[str, float] | None = None
    """Mean milliseconds a successful request spent in each of the server's stages over the window
    (``batchserve_stage_duration_seconds``), when the caller read them."""
    windows: tuple[Window, ...] = ()
    """The measurement window cut in equal parts (``summarize``'s ``windows``), each's figures."""
    due: int | None = None
    """Open loop: arrivals whose answer, at the median latency, falls in the window (warm-up's
    included, the window's last ones not): what a server that keeps up answers in it."""
    jitter_ms: float | None = None
    """Open loop: the mean distance of a latency from the median, which moves an answer across the
    window's ends and so ``due`` away from what was answered in it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_server(self, mean_batch_size: float | None, stages_ms: dict[str, float] | None) -> Summary:
        return replace(self, mean_batch_size=mean_batch_size, stages_ms=stages_ms)


def summarize(run: Run, rows_per_request: int = 1, windows: int = 1) -> Summary:
    """The run's figures; ``windows``: also each of that many equal parts of its window (throughput
    from the 2xx answers that arrived in the part, p99 over the requests that started in it)."""
    import numpy as np

    records = run.records
    intended = np.frombuffer(records.intended, dtype=np.float64)
    sent = np.frombuffer(records.sent, dtype=np.float64)
    end = np.frombuffer(records.end, dtype=np.float64)
    status = np.frombuffer(records.status, dtype=np.uint16)
    start = run.measure_start
    measured = intended >= start
    if run.stop_at > 0:
        window_end = run.stop_at
        measured &= intended < window_end
    else:
        window_end = float(end[measured].max()) if measured.any() else start
    window_s = max(window_end - start, 1e-9)
    in_window = (end >= start) & (end <= window_end)
    ok = (status >= 200) & (status < 300)
    latency = (end[measured] - intended[measured]) * 1000
    lag = (sent[measured] - intended[measured]) * 1000
    codes, counts = np.unique(status[measured], return_counts=True)
    requests = int(measured.sum())
    rps = float(in_window.sum()) / window_s
    due = jitter = None
    if run.spec.mode == "open" and requests:
        median = float(np.median(latency))
        shifted = intended + median / 1000
        due = int(((shifted >= start) & (shifted <= window_end)).sum())
        jitter = float(np.abs(latency - median).mean())
    return Summary(
        mode=run.spec.mode, concurrency=run.spec.concurrency, rate=run.spec.rate,
        processes=run.processes, rows_per_request=rows_per_request, window_s=window_s,
        requests=requests, throughput_rps=rps, ok_rps=float((in_window & ok).sum()) / window_s,
        rows_per_s=float((in_window & ok).sum()) / window_s * rows_per_request,
        latency_ms=_percentiles(latency),
        status_counts={describe_status(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        error_rate=float((~ok[measured]).sum()) / requests if requests else 0.0,
        error_examples={describe_status(s): body.decode("utf-8", "replace")
                        for s, body in sorted(records.error_examples.items())},
        send_lag_ms=_percentiles(lag) if run.spec.mode == "open" else {},
        max_backlog=records.max_backlog,
        windows=tuple(_windows(start, window_s, windows, intended, end, ok, rows_per_request)),
        due=due, jitter_ms=jitter,
    )


def _windows(start: float, window_s: float, count: int, intended: Any, end: Any, ok: Any,
             rows_per_request: int) -> list[Window]:
    import numpy as np

    part_s = window_s / count
    parts = []
    for k in range(count):
        low, high = start + k * part_s, start + (k + 1) * part_s
        answered = ok & (end >= low) & (end < high if k < count - 1 else end <= high)
        started = (intended >= low) & (intended < high)
        latency = (end[started] - intended[started]) * 1000
        p99 = float(np.percentile(latency, 99)) if len(latency) else float("nan")
        parts.append(Window(float(answered.sum()) / part_s * rows_per_request, p99, int(started.sum())))
    return parts


def _percentiles(values: Any) -> dict[str, float]:
    import numpy as np

    if len(values) == 0:
        nan = float("nan")
        return {"p10": nan, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    p10, p50, p90, p99 = np.percentile(values, [10, 50, 90, 99])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(values.max()), "mean": float(values.mean())}


def format_ms(value: float) -> str:
    """Milliseconds with sensible precision: 0.42 ms, 12.3 ms, 1,234 ms."""
    if value != value:  # NaN: nothing measured
        return "—"
    if value < 10:
        return f"{value:.2f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def markdown_table(summary: Summary) -> str:
    """The headline figures of one run as a markdown table, and its statuses."""
    latency = summary.latency_ms
    batch = "—" if summary.mean_batch_size is None else f"{summary.mean_batch_size:.1f}"
    lines = [
        "| throughput (req/s) | rows/s | p50 | p90 | p99 | max | errors | mean batch |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary.throughput_rps:,.1f} | {summary.rows_per_s:,.1f} | {format_ms(latency['p50'])} | "
        f"{format_ms(latency['p90'])} | {format_ms(latency['p99'])} | {format_ms(latency['max'])} | "
        f"{summary.error_rate:.2%} | {batch} |",
        "",
        "| status | requests |",
        "|---|---|",
        *(f"| {status} | {count:,} |" for status, count in summary.status_counts.items()),
    ]
    if summary.stages_ms:
        stages = summary.stages_ms
        lines += ["", "Where a successful request's time went, server side (mean over the window, from "
                  "`batchserve_stage_duration_seconds`):", "",
                  "| " + " | ".join(stages) + " |", "|" + "---|" * len(stages),
                  "| " + " | ".join(format_ms(value) for value in stages.values()) + " |"]
    return "\n".join(lines)
