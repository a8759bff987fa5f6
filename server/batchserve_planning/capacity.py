"""From one replica's measured figures to a fleet: replicas for the load, cost, memory, the pick.

Every figure here is computed from measurements in results.json (a test recomputes them):

- replicas for ``--target-rps``: the target over what one replica may be given, its open-loop
  peak within the SLO less ``headroom`` (default 20%: the peak is measured where p99 just meets
  the SLO, so a burst or a slower neighbour there breaks it, and a re-measured peak on a shared
  machine moves by up to ~10%; a replica run at 80% of its peak keeps both inside);
- replicas for ``--concurrency``: the clients over the most concurrent clients one replica
  carried within the SLO in its sweep (clients spread evenly, as a round-robin balancer does);
- $/hour: replicas x the profile's price; $ per 1M inferences at the target: that over the
  inferences per hour the target is (requests/s x rows per request x 3600);
- memory: the replica's peak resident memory (the whole server) plus ``MEMORY_HEADROOM``,
  rounded up to the next size in ``MEMORY_SIZES``; a profile with less memory loses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
HEADROOM = 0.20
MEMORY_HEADROOM = 0.25
"""Peak resident memory + 25%: allocator fragmentation over a long run, and inputs larger than
the samples measured."""
MEMORY_SIZES = (GIB // 2, *(2**k * GIB for k in range(11)))
"""Memory sizes machines come in: 0.5 GiB, then powers of two up to 1 TiB."""


MAX_HEADROOM = 0.5
"""The most of a replica's peak variance-aware sizing keeps free."""


def variance_headroom(headroom: float, service_cv: float | None) -> float:
    """The headroom a model's service-time variation needs: ``headroom`` x (1 + cv^2), at most
    ``MAX_HEADROOM``. A queue's waiting time grows with (1 + cv^2) of the service time
    (Pollaczek-Khinchine), so a model whose requests vary in cost (texts of mixed lengths) keeps
    more of its peak free for the same p99 than one whose every request costs the same (cv ~ 0,
    the headroom as given). ``service_cv``: measured (``ramp.robust_cv`` at one client)."""
    if service_cv is None:
        return headroom
    return max(headroom, min(MAX_HEADROOM, headroom * (1 + service_cv**2)))


def variance_responses(min_responses: int, service_cv: float | None) -> int:
    """Answers an open-loop step of such a model waits for: ``min_responses`` x (1 + cv^2), the same
    factor, so that its p99 rests on as many queueing episodes as a steady model's."""
    return min_responses if service_cv is None else math.ceil(min_responses * (1 + service_cv**2))


@dataclass(frozen=True)
class Load:
    """The load to carry: an arrival rate, a number of clients, or both (None: neither, size one
    replica at its peak)."""

    target_rps: float | None
    concurrency: int | None
    rows_per_request: int
    headroom: float = HEADROOM
    max_replicas: int = 64


@dataclass(frozen=True)
class Sizing:
    peak_rps: float
    """One replica's open-loop peak arrival rate within the SLO (requests/s)."""
    per_replica_rps: float
    """What one replica is given: the peak less the headroom."""
    max_clients: int | None
    replicas: int
    replicas_for_rate: int | None
    replicas_for_clients: int | None
    served_rps: float
    """The load the costs are for: the target, else the replicas at their per-replica rate."""
    dollars_per_hour: float
    dollars_per_million: float
    peak_rss_bytes: int | None
    memory_needed_bytes: int | None
    memory_size_bytes: int | None
    fits_memory: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_size(peak_bytes: int) -> tuple[int, int]:
    """The memory a replica needs with headroom, and the smallest size in ``MEMORY_SIZES`` that fits it."""
    needed = math.ceil(peak_bytes * (1 + MEMORY_HEADROOM))
    return needed, next((s for s in MEMORY_SIZES if s >= needed), needed)


def size(load: Load, peak_rps: float, max_clients: int | None, peak_rss_bytes: int | None,
         price_per_hour: float, memory_bytes: int) -> Sizing:
    """Replicas, cost and memory for one profile from its measured figures."""
    per_replica = peak_rps * (1 - load.headroom)
    for_rate = math.ceil(load.target_rps / per_replica - 1e-9) if load.target_rps else None
    for_clients = (math.ceil(load.concurrency / max_clients) if load.concurrency and max_clients else None)
    replicas = max(1, for_rate or 0, for_clients or 0)
    served = load.target_rps if load.target_rps else replicas * per_replica
    dollars = replicas * price_per_hour
    per_million = dollars / (served * load.rows_per_request * 3600) * 1e6 if served > 0 else math.inf
    needed, sized = memory_size(peak_rss_bytes) if peak_rss_bytes else (None, None)
    return Sizing(peak_rps=peak_rps, per_replica_rps=per_replica, max_clients=max_clients,
                  replicas=replicas, replicas_for_rate=for_rate, replicas_for_clients=for_clients,
                  served_rps=served, dollars_per_hour=dollars, dollars_per_million=per_million,
                  peak_rss_bytes=peak_rss_bytes, memory_needed_bytes=needed, memory_size_bytes=sized,
                  fits_memory=needed is None or needed <= memory_bytes)


@dataclass(frozen=True)
class Verdict:
    """Whether a profile can carry the load, and if not, why (in words for the report)."""

    name: str
    ok: bool
    reason: str
    sizing: Sizing | None = None


def judge(name: str, sizing: Sizing | None, load: Load, memory_bytes: int, why_not: str | None) -> Verdict:
    """``why_not``: the measurement's own failure (refused, nothing within the SLO), or None."""
    if why_not is not None or sizing is None:
        return Verdict(name, False, why_not or "not measured", sizing)
    if sizing.replicas > load.max_replicas:
        return Verdict(name, False, f"needs {sizing.replicas} replicas for the load, more than "
                                    f"--max-replicas {load.max_replicas}", sizing)
    if not sizing.fits_memory:
        assert sizing.memory_needed_bytes is not None
        needed = sizing.memory_needed_bytes / GIB
        return Verdict(name, False, f"needs {needed:.2f} GiB per replica with {MEMORY_HEADROOM:.0%} "
                                    f"headroom; it has {memory_bytes / GIB:g} GiB", sizing)
    return Verdict(name, True, "carries the load within the SLO", sizing)


def pick(verdicts: list[Verdict]) -> Verdict | None:
    """The cheapest profile that carries the load: the least $/hour (the same load for all, so
    the least $ per 1M), then fewer replicas, then the order given."""
    able = [v for v in verdicts if v.ok and v.sizing is not None]
    if not able:
        return None
    return min(able, key=lambda v: (round(v.sizing.dollars_per_hour, 9) if v.sizing else 0.0,
                                    v.sizing.replicas if v.sizing else 0))


def explain_losers(verdicts: list[Verdict], chosen: Verdict) -> dict[str, str]:
    """Why each other profile lost, in words."""
    assert chosen.sizing is not None
    reasons = {}
    for verdict in verdicts:
        if verdict is chosen:
            continue
        if not verdict.ok or verdict.sizing is None:
            reasons[verdict.name] = verdict.reason
            continue
        other = verdict.sizing
        reasons[verdict.name] = (
            f"more expensive: ${other.dollars_per_million:.4g} per 1M inferences ({other.replicas} "
            f"replica{'s' if other.replicas > 1 else ''}, ${other.dollars_per_hour:.4g}/h) against "
            f"${chosen.sizing.dollars_per_million:.4g} ({chosen.name})"
            if other.dollars_per_hour > chosen.sizing.dollars_per_hour else
            f"as cheap (${other.dollars_per_hour:.4g}/h) but needs {other.replicas} replicas against "
            f"{chosen.sizing.replicas}")
    return reasons
