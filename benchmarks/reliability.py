"""Overload and soak against a real server, with every request accounted for.

overload: measure the model's capacity (closed loop, CONCURRENCY clients, 15 s), then offer
  twice that as Poisson arrivals for DURATION_S (default 30 s). Every request must end in 200,
  503 with Retry-After, or 504, none after its deadline; RSS is compared before and after.
soak: offer 70% of capacity for DURATION_S (default 600 s), sampling the server's RSS every
  10 s; prints the samples and the drift.
Counts: tried, answered by status and transport errors as the client saw them, reconciled with
the server's own count of what it answered (batchserve_requests_total by code, over the open
loop): both must agree code by code, with no transport error, and "lost" (tried - what the
server counted) must be 0; else the run exits 1 after printing its report.

Reports also the share of refusals that came at the deadline (504 / (503 + 504)) and the goodput
(200s per second over the closed-loop capacity). SERVER_CORE=0 pins the server to core 0.

Usage: .venv/bin/python benchmarks/reliability.py overload|soak   (resnet50; TIMEOUT_MS, DURATION_S)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import httpx
import sklearn.datasets

ROOT = Path(__file__).resolve().parent.parent
MODE = sys.argv[1] if len(sys.argv) > 1 else "overload"
DURATION_S = float(os.environ.get("DURATION_S", "30" if MODE == "overload" else "600"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
TIMEOUT_MS = int(os.environ.get("TIMEOUT_MS", "5000"))
PORT = int(os.environ.get("PORT", "8095"))
SERVER_CORE = os.environ.get("SERVER_CORE")  # e.g. "0": the server pinned to that core (taskset)
IMAGE = (Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / "china.jpg").read_bytes()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def config() -> str:
    weights = harness.demo_artifact("resnet50")
    return (f'[[models]]\nname = "resnet50"\nbackend = "resnet50"\npath = "{weights}"\n'
            f"max_batch_size = 8\nmax_queue = 64\ntimeout_ms = {TIMEOUT_MS}\n")


async def closed_loop(client: httpx.AsyncClient, seconds: float) -> float:
    done = 0
    until = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < until:
            response = await client.post("/predict/resnet50", content=IMAGE,
                                          headers={"content-type": "image/jpeg"})
            done += response.status_code == 200
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / seconds


async def open_loop(client: httpx.AsyncClient, rate: float, seconds: float, pid: int,
                    samples: list[tuple[float, float]]) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    late = 0
    missing_retry_after = 0

    async def one() -> None:
        nonlocal late, missing_retry_after
        started = time.monotonic()
        try:
            response = await client.post("/predict/resnet50", content=IMAGE,
                                          headers={"content-type": "image/jpeg"})
        except httpx.TransportError as exc:
            statuses[type(exc).__name__] += 1
            return
        statuses[str(response.status_code)] += 1
        if response.status_code == 503 and "retry-after" not in response.headers:
            missing_retry_after += 1
        if time.monotonic() - started > TIMEOUT_MS / 1000 + 1.0:
            late += 1

    rng = random.Random(0)
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    next_sample = started
    while time.monotonic() - started < seconds:
        tasks.append(asyncio.create_task(one()))
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - started, rss_mib(pid)))
            next_sample += 10
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    answered = sum(v for k, v in statuses.items() if k.isdigit())
    errors = sum(v for k, v in statuses.items() if not k.isdigit())
    return {"tried": len(tasks), "statuses": dict(statuses), "answered": answered,
            "transport_errors": errors, "late_past_deadline": late,
            "503_without_retry_after": missing_retry_after}


def served_by_code(url: str, model: str = "resnet50") -> Counter[str]:
    """The server's own count of the requests it answered, by status code (all of them, whatever
    the client made of them)."""
    served: Counter[str] = Counter()
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "batchserve_requests_total" and found.get("model") == model:
            served[found["code"]] = round(float(value))
    return served


def reconcile(result: dict[str, Any], served: Counter[str]) -> dict[str, Any]:
    """The client's counts against the server's: what differs, code by code, and what the server
    never counted (``lost``); ``reconciled`` when nothing does and no request hit a transport error."""
    seen = Counter({code: count for code, count in result["statuses"].items() if code.isdigit()})
    differences = {code: seen[code] - served[code] for code in sorted(set(seen) | set(served))
                   if seen[code] != served[code]}
    lost = result["tried"] - sum(served.values())
    return {"server_statuses": dict(served), "client_minus_server": differences, "lost": lost,
            "reconciled": not differences and lost == 0 and result["transport_errors"] == 0}


async def main() -> None:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    with harness.batchserve(config(), PORT, core=SERVER_CORE) as (url, process):
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT_MS / 1000 + 30) as client:
            capacity = await closed_loop(client, 15)
            rss_before = rss_mib(process.pid)
            rate = capacity * (2.0 if MODE == "overload" else 0.7)
            samples: list[tuple[float, float]] = []
            before = served_by_code(url)
            result = await open_loop(client, rate, DURATION_S, process.pid, samples)
            result.update(reconcile(result, served_by_code(url) - before))
            await asyncio.sleep(10)  # idle: what the server keeps once the storm is over
            rss_after = rss_mib(process.pid)
    commit = harness.commit()
    report = {"mode": MODE, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
              "capacity_img_s": capacity, "offered_per_s": rate, "duration_s": DURATION_S,
              "rss_mib_before": rss_before, "rss_mib_after": rss_after, "rss_samples": samples, **result}
    codes = result["statuses"]
    refused = codes.get("503", 0) + codes.get("504", 0)
    # what admission is for: refusals at once (503), not at the deadline (504); and the model's
    # time spent on requests answered in time (goodput, against the closed-loop capacity)
    report["late_refusal_share"] = codes.get("504", 0) / refused if refused else 0.0
    report["goodput_of_capacity"] = codes.get("200", 0) / DURATION_S / capacity if capacity else 0.0
    print(json.dumps(report, indent=2))
    harness.save_results(f"reliability-{MODE}", report)
    if not report["reconciled"]:
        sys.exit(f"reliability: the client's counts and the server's differ: "
                 f"{report['client_minus_server']}, lost {report['lost']}, "
                 f"transport errors {report['transport_errors']}")


if __name__ == "__main__":
    asyncio.run(main())
