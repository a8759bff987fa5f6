"""``recommend --hardware``: each profile measured on its share of this machine, sized to the load,
priced; the cheapest that carries it picked and checked.

Per profile (placed by ``hardware.place``): the batching ``Sweep`` confined to its CPUs (and
quota), its final round and ``choose`` as without profiles; then the pick's open-loop peak
arrival rate within the SLO (``openloop.peak_rate``: Poisson arrivals, latency from each
arrival), and ``capacity.size``. The checks, after the pick: its own configuration started
again on its profile and sent its share of the target open-loop (one replica's: the target over
the replicas), and, where this machine can host two of a profile, two replicas behind nginx
measured at their peak against twice one replica's.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve_planning.capacity import (
    Load,
    Sizing,
    Verdict,
    judge,
    pick,
    size,
    variance_headroom,
    variance_responses,
)
from batchserve_planning.hardware import Placement, Profile, Refusal, place

if TYPE_CHECKING:
    from batchserve_planning.candidates import Candidate, Outcome
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.openloop import OpenStep, Peak
    from batchserve_planning.ramp import RampSettings, Step

TOLERANCE = 0.10
"""Measured throughput may differ from the prediction by this share before the report says so."""
RERUN_ARRIVALS, RERUN_MAX_S = 200, 60.0
"""The re-run of the pick lasts for about this many arrivals, and no longer than this."""
RERUN_SEED = 1000
"""Its Poisson draw: not one of the peak search's."""
CHECKS_SHARE = 0.2
"""Of the budget, what is kept for the checks after the profiles."""
OPEN_LOOP_SHARE = 0.3
"""Of a profile's share, what its open-loop peak search gets after its sweep (the sweep stops
short of the rest; the search stops at the profile's share)."""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "profile"


class Fleet:
    """One ``recommend --hardware`` run: the profiles, then the checks."""

    def __init__(self, args: argparse.Namespace, base: dict[str, Any], samples: list[Any],
                 settings: RampSettings, out: Path, load: Load, machine_cpus: list[int]) -> None:
        self.args = args
        self.base = base
        self.samples = samples
        self.settings = settings
        self.out = out
        self.load = load
        self.machine_cpus = machine_cpus
        self.started = time.monotonic()
        self.bars: Bars | None = None
        self.sweeps: dict[str, Any] = {}

    def _sweep(self, placement: Placement, budget_s: float) -> Any:
        from batchserve_planning.sweep import Sweep

        args = argparse.Namespace(**{**vars(self.args), "server_cpus": set(placement.server_cpus),
                                     "budget_s": budget_s})
        load_cpus = set(placement.load_cpus) if placement.load_cpus is not None else None
        folder = self.out / "profiles" / slug(placement.profile.name)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        sweep = Sweep(args, self.base, self.samples, replace(self.settings, load_cpus=load_cpus), folder,
                      quota_cpus=placement.quota_cpus, rerun=False, profile=True)
        sweep.bars = self.bars
        return sweep

    def measure(self, profiles: list[Profile], gpus: int, quota_problem: str | None) -> list[dict[str, Any]]:
        """Every profile measured (or refused), in the order given."""
        entries = []
        placements = [place(p, self.machine_cpus, gpus, quota_problem) for p in profiles]
        placements = [self._runs_here(p) for p in placements]
        measurable = sum(isinstance(p, Placement) for p in placements)
        for placement in placements:
            if isinstance(placement, Refusal):
                assert self.bars is not None
                self.bars.print(f"{placement.profile.name}: not measured: {placement.reason}")
                entries.append({"profile": placement.profile.to_dict(), "placement": None,
                                "refused": placement.reason})
                continue
            left = self.args.budget_s * (1 - CHECKS_SHARE) - (time.monotonic() - self.started)
            entries.append(self._measure_one(placement, max(1.0, left / measurable)))
            measurable -= 1
        return entries

    def _runs_here(self, placement: Placement | Refusal) -> Placement | Refusal:
        """A placement the model's backend can't use (a GPU for a CPU-only backend) is refused."""
        from batchserve_planning.choices import device_dtypes

        if isinstance(placement, Refusal):
            return placement
        try:
            device_dtypes(argparse.Namespace(devices=placement.device, dtypes=self.args.dtypes), self.base,
                           "dtype" in self._options_fields())
        except ValueError as exc:
            return Refusal(placement.profile, str(exc).split(": use")[0])
        return placement

    def _measure_one(self, placement: Placement, budget_s: float) -> dict[str, Any]:
        from batchserve_planning.choices import choose, device_dtypes

        profile = placement.profile
        assert self.bars is not None
        self.bars.print(f"{profile.name} ({profile.describe()}): {placement.how()}")
        deadline = time.monotonic() + budget_s
        sweep = self._sweep(placement, budget_s * (1 - OPEN_LOOP_SHARE))
        self.sweeps[profile.name] = sweep
        devices = argparse.Namespace(devices=placement.device, dtypes=self.args.dtypes)
        has_dtype = "dtype" in self._options_fields()
        outcomes, skipped = sweep.search(device_dtypes(devices, self.base, has_dtype))
        finals = sweep.final_round(outcomes)
        chosen, predicted = choose(outcomes, finals, sweep.notes)
        entry: dict[str, Any] = {
            "profile": profile.to_dict(), "placement": placement.to_dict(), "refused": None,
            "candidates": [o.to_dict() for o in outcomes], "skipped": [c.label() for c in skipped],
            "final_round": sweep.finals.entries(outcomes, finals),
            "pick": outcomes.index(chosen) if chosen is not None else None,
            "predicted": asdict(predicted) if predicted else None, "open_loop": None, "sizing": None}
        if chosen is None or predicted is None:
            entry["why_not"] = _too_slow(outcomes, finals, self.settings.slo_ms)
            return entry
        entry["decisions"] = list(dict.fromkeys(sweep.notes))
        single = [s for s in chosen.steps if s.concurrency == 1]
        cv = single[0].latency_cv if single else None
        headroom = variance_headroom(self.load.headroom, cv)
        responses = variance_responses(self.settings.min_responses, cv)
        entry["variance"] = {"service_cv": cv, "headroom": headroom, "min_responses": responses}
        sweep.settings = replace(sweep.settings, min_responses=responses)
        peak = self._peak(sweep, chosen, predicted.rps, f"{profile.name}: open-loop peak", deadline)
        entry["open_loop"] = peak.to_dict() if peak is not None else None
        if peak is None or peak.rate_rps is None:
            entry["why_not"] = _no_rate(peak, self.settings.slo_ms)
            return entry
        clients = [s.concurrency for s in chosen.steps if s.within_slo]
        sizing = size(replace(self.load, headroom=headroom), peak.rate_rps, max(clients) if clients else None,
                      chosen.peak_rss_bytes, profile.price_per_hour, profile.memory_bytes)
        entry["sizing"] = sizing.to_dict()
        entry["why_not"] = None
        return entry

    def _options_fields(self) -> set[str]:
        from batchserve.backends import backend_class

        return set(backend_class(self.base["backend"]).Options.model_fields)

    def _peak(self, sweep: Any, outcome: Outcome, start_rps: float, label: str,
              deadline: float) -> Peak | None:
        from batchserve_planning.load.scrape import ServerError
        from batchserve_planning.openloop import peak_rate

        try:
            server = sweep.start_server(outcome.candidate, "open-loop")
        except ServerError as exc:
            assert self.bars is not None
            self.bars.print(f"{label}: did not start ({str(exc).splitlines()[0]})")
            return None
        try:
            return peak_rate(server.url, self.args.model, sweep.requests_for(server), sweep.settings,
                             start_rps, self.bars, label, deadline=deadline)
        finally:
            server.stop()

    def decide(self, entries: list[dict[str, Any]]) -> tuple[list[Verdict], Verdict | None]:
        verdicts = []
        for entry in entries:
            profile = entry["profile"]
            sizing = Sizing(**entry["sizing"]) if entry.get("sizing") else None
            why_not = (entry["refused"] and f"not measured: {entry['refused']}") or entry.get("why_not")
            verdicts.append(judge(profile["name"], sizing, self.load, profile["memory_bytes"], why_not))
        return verdicts, pick(verdicts)

    # The checks

    def rerun(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The pick started again on its profile, sent one replica's share of the load open-loop."""
        from batchserve_planning.load.scrape import ServerError
        from batchserve_planning.openloop import measure_open

        name = entry["profile"]["name"]
        sweep = self.sweeps[name]
        candidate = _picked(entry)
        sizing = entry["sizing"]
        rate = sizing["served_rps"] / sizing["replicas"]
        label = f"check: {name} re-run at {rate:,.1f}/s"
        try:
            server = sweep.start_server(candidate, "check-rerun")
        except ServerError as exc:
            return {"error": f"did not start: {str(exc).splitlines()[0]}"}
        try:
            # Long enough for ~RERUN_ARRIVALS arrivals (a slow model's share of the target is a few
            # per second), at most RERUN_MAX_S.
            duration = max(3 * self.settings.step_s, min(RERUN_MAX_S, RERUN_ARRIVALS / rate))
            step = measure_open(server.url, self.args.model, sweep.requests_for(server), rate,
                                sweep.settings, self.bars, label, duration_s=duration, seed=RERUN_SEED)
        finally:
            server.stop()
        return _compared(rate, step, self.settings.slo_ms)

    def replica_check(self, entries: list[dict[str, Any]], chosen: str) -> dict[str, Any]:
        """Two replicas of a profile behind nginx, their open-loop peak against twice one's."""
        from batchserve_planning.load.scrape import ServerError
        from batchserve_planning.openloop import peak_rate
        from batchserve_planning.replicas import ReplicaSet, nginx_missing

        missing = nginx_missing()
        if missing is not None:
            return {"skipped": missing}
        fits = [e for e in entries if e.get("sizing") and e["profile"]["gpu"] is None
                and 2 * len(e["placement"]["server_cpus"]) <= len(self.machine_cpus)]
        if not fits:
            return {"skipped": f"no measured CPU profile fits twice in this run's {len(self.machine_cpus)} "
                               "CPUs (a GPU profile's two replicas would share its one GPU)"}
        entry = next((e for e in fits if e["profile"]["name"] == chosen),
                     min(fits, key=lambda e: len(e["placement"]["server_cpus"])))
        name = entry["profile"]["name"]
        sweep = self.sweeps[name]
        candidate = _picked(entry)
        width = len(entry["placement"]["server_cpus"])
        cpus = [set(self.machine_cpus[i * width:(i + 1) * width]) for i in range(2)]
        shared = 2 * width == len(self.machine_cpus)
        config = sweep.write_config(candidate, "check-replicas")
        replicas = ReplicaSet(config, cpus, sweep.out / "logs", quota_cpus=entry["placement"]["quota_cpus"],
                              args=candidate.serve_args())
        single = entry["sizing"]["peak_rps"]
        try:
            replicas.wait_ready()
            settings = replace(sweep.settings, load_cpus=None if shared else
                               set(self.machine_cpus[2 * width:]))
            peak = peak_rate(replicas.url, self.args.model, sweep.requests_for(replicas), settings,
                             2 * single, self.bars, f"check: 2 x {name} behind nginx",
                             deadline=self.started + self.args.budget_s)
        except (ServerError, OSError, RuntimeError) as exc:
            return {"profile": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        finally:
            replicas.stop()
        predicted = 2 * single
        measured = peak.rate_rps
        result: dict[str, Any] = {
            "profile": name, "replicas": 2, "cpus": [sorted(c) for c in cpus],
            "generator": "sharing the replicas' CPUs" if shared else "on the CPUs left over",
            "predicted_rps": predicted, "measured_rps": measured, "open_loop": peak.to_dict()}
        if measured is not None:
            result["ratio"] = measured / predicted
            result["within_10pct"] = abs(measured / predicted - 1) <= TOLERANCE
        return result


def _picked(entry: dict[str, Any]) -> Candidate:
    """The configuration a measured profile picked."""
    from batchserve_planning.candidates import Candidate

    return Candidate(**entry["candidates"][entry["pick"]]["candidate"])


def _compared(rate: float, step: OpenStep, slo_ms: float) -> dict[str, Any]:
    """The re-run against its prediction: it should answer what arrived (the Poisson draw of the
    window: ``rate`` give or take ~1/sqrt(arrivals)) within the SLO."""
    ratio = step.carried_rps / step.arrived_rps if step.arrived_rps > 0 else 0.0
    return {"offered_rps": rate, "arrived_rps": step.arrived_rps, "carried_rps": step.carried_rps,
            "ratio": ratio, "throughput_within_10pct": abs(ratio - 1) <= TOLERANCE, "p99_ms": step.p99_ms,
            "p99_within_slo": step.p99_ms <= slo_ms, "error_rate": step.error_rate, "step": asdict(step),
            "holds": abs(ratio - 1) <= TOLERANCE and step.p99_ms <= slo_ms}


def _too_slow(outcomes: list[Outcome], finals: list[tuple[Outcome, Step]], slo_ms: float) -> str:
    """Why a profile has no pick: nothing met the SLO in its sweep, or what did was measured over
    it in the final round (``choices.unrefuted``)."""
    refuted = [(s.p99_ms, s.concurrency, o.candidate.label()) for o, s in finals if not s.within_slo]
    if refuted and any(o.best is not None for o in outcomes):
        p99, clients, label = min(refuted)
        return (f"met the SLO in its sweep, but not when measured again in the final round: {label} at "
                f"{clients} clients, p99 {p99:,.1f} ms against {slo_ms:g} ms")
    steps = [(s.p99_ms, o.candidate.label()) for o in outcomes for s in o.steps]
    if not steps:
        errors = [o.error for o in outcomes if o.error]
        return "nothing measured" + (f": {errors[0].splitlines()[0]}" if errors else "")
    p99, label = min(steps)
    return (f"too slow for the SLO at any batch size: its lowest p99 was {p99:,.1f} ms ({label}, "
            f"one client), against {slo_ms:g} ms")


def _no_rate(peak: Peak | None, slo_ms: float) -> str:
    if peak is None or not peak.steps:
        return "the open-loop measurement did not run (see logs/)"
    low = min(peak.steps, key=lambda s: s.offered_rps)
    return (f"met the SLO with a closed loop, but at no arrival rate tried: at {low.offered_rps:,.1f}/s "
            f"p99 was {low.p99_ms:,.1f} ms against {slo_ms:g} ms")


def closest(entries: list[dict[str, Any]], verdicts: list[Verdict]) -> str:
    """What came closest when no profile carries the load, in words."""
    sized = [(v.sizing.replicas, v.name, v.reason) for v in verdicts if v.sizing is not None]
    if sized:
        replicas, name, reason = min(sized)
        return f"closest: {name}, {reason} ({replicas} replica{'s' if replicas > 1 else ''} of it)"
    measured = [(min(s["p99_ms"] for c in e["candidates"] for s in c["steps"]), e["profile"]["name"])
                for e in entries if e.get("candidates") and any(c["steps"] for c in e["candidates"])]
    if measured:
        p99, name = min(measured)
        return f"closest: {name}, whose lowest p99 was {p99:,.1f} ms"
    return "no profile could be measured here"
