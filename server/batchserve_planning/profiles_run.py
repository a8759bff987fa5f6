"""``recommend --hardware``: the run, from the profiles file to the report and the exit status."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve_planning.capacity import Load
    from batchserve_planning.ramp import RampSettings


def run_profiles(args: argparse.Namespace, base: dict[str, Any], samples: list[Any], settings: RampSettings,
                 out: Path, input_notes: list[str]) -> int:
    """0: a profile carries the load and the report says which; 1: none does (the message says
    what came closest); 2: a hardware file or load that can't be used."""
    from batchserve_planning.capacity import explain_losers
    from batchserve_planning.choices import inspect_size
    from batchserve_planning.confine import quota_support
    from batchserve_planning.fleet import Fleet, closest
    from batchserve_planning.hardware import HardwareError, gpu_count, load_profiles
    from batchserve_planning.ladder import batch_cap
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.report_profiles import write

    try:
        profiles = load_profiles(args.hardware)
        load = _load(args)
    except (HardwareError, ValueError) as exc:
        print(f"batchserve recommend: {exc}", file=sys.stderr)
        return 2
    machine_cpus = sorted(args.server_cpus or os.sched_getaffinity(0))
    fleet = Fleet(args, base, samples, settings, out, load, machine_cpus)
    checks: dict[str, Any] = {}
    with Bars(not args.no_progress) as bars:
        fleet.bars = bars
        model_size, memory_by_input = inspect_size(args.config, args.model, bars, batch_cap(args, base))
        gpus = gpu_count()
        quota_problem = quota_support()
        entries = fleet.measure(profiles, gpus, quota_problem)
        verdicts, chosen = fleet.decide(entries)
        if chosen is not None:
            entry = next(e for e in entries if e["profile"]["name"] == chosen.name)
            checks["rerun"] = fleet.rerun(entry)
            checks["replicas"] = fleet.replica_check(entries, chosen.name)
    results = {
        "mode": "profiles", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "model": args.model, "config": str(args.config), "inputs": str(args.inputs),
        "input_notes": input_notes,
        "hardware": str(args.hardware), "slo_p99_ms": args.slo_p99_ms,
        "load": {"target_rps": load.target_rps, "concurrency": load.concurrency,
                 "rows_per_request": load.rows_per_request, "headroom": load.headroom,
                 "max_replicas": load.max_replicas},
        "budget_s": args.budget_s, "elapsed_s": time.monotonic() - fleet.started,
        "machine": {"cpus": machine_cpus, "gpus": gpus, "quota_problem": quota_problem},
        "settings": {"step_s": settings.step_s, "max_step_s": settings.max_step_s,
                     "min_responses": settings.min_responses, "max_concurrency": settings.max_concurrency},
        "model_table": base, "model_size": model_size,
        "memory_by_input": memory_by_input,
        "profiles": entries, "verdicts": [{"name": v.name, "ok": v.ok, "reason": v.reason} for v in verdicts],
        "pick_profile": chosen.name if chosen else None,
        "losers": explain_losers(verdicts, chosen) if chosen else {v.name: v.reason for v in verdicts},
        "closest": None if chosen else closest(entries, verdicts), "checks": checks,
        "stability": asdict(settings.rule), "contention": _contention(entries, checks),
    }
    print(write(out, results))
    print(f"\nwrote {out}/report.md, profiles.png and results.json")
    if chosen is None:
        print(f"batchserve recommend: no profile carries the load within the SLO; {results['closest']}",
              file=sys.stderr)
        return 1
    if not (checks.get("rerun") or {}).get("holds"):
        print("batchserve recommend: NOT CONFIRMED: the pick's re-run did not hold (see the report)",
              file=sys.stderr)
        return 3
    return 0


def _contention(entries: list[dict[str, Any]], checks: dict[str, Any]) -> dict[str, Any]:
    """Contention over every measurement of the run (``contention.summary``)."""
    from batchserve_planning.contention import summary

    measured: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        name = entry["profile"]["name"]
        for index, outcome in enumerate(entry.get("candidates") or []):
            measured += [(f"{name} #{index + 1} @ {s['concurrency']} clients", s) for s in outcome["steps"]]
        for step in (entry.get("open_loop") or {}).get("steps", []):
            measured.append((f"{name} open loop @ {step['offered_rps']:,.1f}/s", step))
    if (checks.get("rerun") or {}).get("step"):
        measured.append(("re-run of the pick", checks["rerun"]["step"]))
    return summary(measured)


def _load(args: argparse.Namespace) -> Load:
    from batchserve_planning.capacity import Load

    if args.target_rps is not None and args.target_rps <= 0:
        raise ValueError(f"--target-rps must be > 0, not {args.target_rps:g}")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, not {args.concurrency}")
    if not 0 <= args.headroom < 1:
        raise ValueError(f"--headroom is a share of the peak kept free, in [0, 1): not {args.headroom:g}")
    if args.max_replicas < 1:
        raise ValueError(f"--max-replicas must be >= 1, not {args.max_replicas}")
    return Load(args.target_rps, args.concurrency, args.rows_per_request, args.headroom, args.max_replicas)
