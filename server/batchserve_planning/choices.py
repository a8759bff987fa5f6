"""What a ``recommend`` run decides outside the sweep itself: the devices and dtypes to try, the
model's measured size (``batchserve inspect``), and the pick from a sweep's outcomes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve_planning.candidates import Outcome, Variant
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.ramp import Step


def device_dtypes(args: argparse.Namespace, base: dict[str, Any], has_dtype: bool) -> list[Variant]:
    from batchserve.backends import backend_class
    from batchserve.backends.capabilities import DeviceSupport

    from batchserve_planning.candidates import Variant

    devices = (args.devices or base.get("device", "cpu")).split(",")
    cls = backend_class(base["backend"])
    if issubclass(cls, DeviceSupport):
        kinds = cls.supported_devices()
        allowed = (*kinds, "auto") if "cuda" in kinds else kinds  # auto: cuda when there is one
        if any(d.partition(":")[0] not in allowed for d in devices):
            where = "the CPU only" if kinds == ("cpu",) else ", ".join(kinds)
            raise ValueError(f"the {base['backend']} backend runs on {where}: use --devices "
                             f"{','.join(kinds)}")
    combos: list[Variant] = []
    for device in devices:
        if not has_dtype:
            combos.append(Variant(device))
            continue
        default = "float32,float16" if device.startswith("cuda") else "float32"
        dtypes = (args.dtypes or default).split(",")
        combos.extend(Variant(device, dtype) for dtype in dtypes
                      if device.startswith("cuda") or dtype == "float32")
    return combos


def inspect_size(config: Path, model: str, bars: Bars, batch_cap: int) -> tuple[dict[str, Any], Any]:
    """Parameters and weight bytes, and peak memory by input size at batch sizes 1, 8 and
    ``batch_cap`` (the largest the sweep may try), from ``batchserve inspect`` in its own process."""
    bars.print(f"measuring the size of {model} and its memory by input size (batchserve inspect)")
    batches = ",".join(str(b) for b in sorted({1, min(8, batch_cap), batch_cap}))
    result = subprocess.run([sys.executable, "-m", "batchserve", "inspect", model, "--config", str(config),
                             "--batch-sizes", "none", "--input-batch-sizes", batches, "--json"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-500:]}, None
    report = json.loads(result.stdout)
    size: dict[str, Any] = report["size"]
    return size, report.get("memory_by_input")


def choose(outcomes: list[Outcome], finals: list[tuple[Outcome, Step]],
           notes: list[str] | None = None) -> tuple[Outcome | None, Step | None]:
    """The pick and the figures that predict it: the final round's best within the SLO, else the
    sweep's (``unrefuted``); of those within the noise of the best, the simplest (``simplest``),
    saying so in ``notes``."""
    inside = [(o, s) for o, s in finals if s.within_slo] or unrefuted(outcomes, finals, notes)
    if not inside:
        return None, None
    pick, step, note = simplest(inside)
    if notes is not None:
        searched, against = finals[0] if finals else (None, None)  # the sweep's pick is measured first
        if searched is not None and against is not None and pick is not searched:
            notes.append(f"the final round overturned the search: {pick.candidate.label()} "
                         f"({_figure(step)}) against {searched.candidate.label()} ({_figure(against)}"
                         f"{'' if against.within_slo else ', over the SLO'}), which the search had kept")
        if note is not None:
            notes.append(note)
    return pick, step


def unrefuted(outcomes: list[Outcome], finals: list[tuple[Outcome, Step]],
              notes: list[str] | None = None) -> list[tuple[Outcome, Step]]:
    """Each candidate's best sweep figure within the SLO that the final round did not refute: a
    finalist over the SLO there keeps only its figures at fewer clients than it was measured at
    (one with none left is out, saying so in ``notes``). On the 2-core VM beside a CPU hog
    (2026-12-07) all-MiniLM-L6-v2 met its SLO at 1 client in one sweep step (p99 194 ms against 200)
    and missed it in the final round at that same client (213 ms): picked from that step, its re-run
    missed too (208 ms)."""
    refuted = {id(o): s for o, s in finals if not s.within_slo}
    pairs: list[tuple[Outcome, Step]] = []
    for o in outcomes:
        final = refuted.get(id(o))
        kept = o.best_below(final.concurrency if final is not None else None)
        if kept is not None:
            pairs.append((o, kept))
        elif final is not None and o.best is not None and notes is not None:
            notes.append(f"{o.candidate.label()} was over the SLO in the final round at "
                         f"{final.concurrency} clients (p99 {final.p99_ms:,.0f} ms), the fewest its "
                         "ramp met the SLO at: its sweep figures there are not a pick")
    return pairs


MEMORY_STEP = 16 * 2**20
"""Peak memories that differ by less than this are the same (a few MiB move from run to run)."""


def simpler_key(outcome: Outcome) -> tuple[float, ...]:
    """Simpler and cheaper first: fewer workers, fewer instances, less memory (by ``MEMORY_STEP``),
    a smaller batch, a shorter wait."""
    c = outcome.candidate
    return (c.workers, c.instances, (outcome.peak_rss_bytes or 0) // MEMORY_STEP, c.max_batch_size,
            c.max_wait_ms)


def simplest(pairs: list[tuple[Outcome, Step]],
             kept: str = "is picked") -> tuple[Outcome, Step, str | None]:
    """The fastest of ``pairs`` (a candidate and its figure), or, of those within the noise of it
    (``ramp.trend``), the simplest; with a sentence saying so where that is not the fastest: the
    simplest one ``kept`` (the search's choices say it is kept for the rest of the search, not
    picked: the final round may still overturn them)."""
    from batchserve_planning.ramp import trend

    top, top_step = max(pairs, key=lambda pair: pair[1].rows_per_s)
    equal = [(o, s) for o, s in pairs if trend(s, top_step) >= 0]
    pick, step = min(equal, key=lambda pair: simpler_key(pair[0]))
    if pick is top:
        return top, top_step, None
    return pick, step, (f"{pick.candidate.label()} ({_figure(step)}) and {top.candidate.label()} "
                        f"({_figure(top_step)}) are equivalent, within their measured noise: "
                        f"{pick.candidate.label()} {kept}, {_why_simpler(pick, top)}")


def _figure(step: Step) -> str:
    spread = step.rows_spread
    over = "its windows" if step.runs == 1 else f"{step.runs} runs"
    return f"{step.rows_per_s:,.0f}/s, {spread.low:,.0f}-{spread.high:,.0f} over {over}"


def _why_simpler(pick: Outcome, other: Outcome) -> str:
    a, b = pick.candidate, other.candidate
    if a.workers != b.workers:
        return f"fewer workers ({a.workers} against {b.workers})"
    if a.instances != b.instances:
        return f"fewer instances ({a.instances} against {b.instances})"
    if (pick.peak_rss_bytes or 0) // MEMORY_STEP < (other.peak_rss_bytes or 0) // MEMORY_STEP:
        return (f"less memory ({(pick.peak_rss_bytes or 0) / 2**20:,.0f} MiB against "
                f"{(other.peak_rss_bytes or 0) / 2**20:,.0f} MiB)")
    if a.max_batch_size != b.max_batch_size:
        return f"a smaller batch ({a.max_batch_size} against {b.max_batch_size})"
    return f"a shorter wait ({a.max_wait_ms:g} ms against {b.max_wait_ms:g} ms)"
