"""Admission over the whole pipeline, against a real server: a burst of requests for a model with
heavy preprocessing, more than it can serve before their deadline, is refused at once (503) for
the part that could not start in time, not admitted to wait out the deadline for a 504.

The fake backend's rates are set by sleeps, not CPU: preprocessing takes 50 ms an item on one
slot, a batch of one row 100 ms. So ~10 of the burst can start within the 1 s deadline, and
preprocessing alone could not get through half of it in time. Requests waiting for the
preprocessing slot are in no queue of the model's batcher: an admission that counted only the
batcher's queue (as before ``load.Backlog``) admitted the whole burst, and half of its refusals
were 504s, at the deadline, waiting for the slot."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support import running_server, sample, write_models

pytestmark = pytest.mark.slow

BURST = 40


async def _burst(url: str, count: int) -> Counter[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        answers = await asyncio.gather(*(client.post("/predict/decode", json={"inputs": [value]})
                                         for value in range(count)))
    return Counter(answer.status_code for answer in answers)


def test_a_burst_past_capacity_is_refused_at_once_not_at_its_deadline(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "decode", "backend": "slow-decode", "path": "x", "max_batch_size": 1,
         "timeout_ms": 1000, "preprocess_concurrency": 1, "max_queue": 1000,
         "options": {"preprocess_ms": 50, "delay_ms": 100}}])
    with running_server(config) as server:
        for value in range(6):  # the rates are measured: preprocessing per item, rows per second
            assert httpx.post(f"{server.url}/predict/decode", json={"inputs": [value]},
                              timeout=30).status_code == 200
        codes = asyncio.run(_burst(server.url, BURST))
        refused_at_once = codes[503]
        late = codes[504]
        assert codes[200] >= 1 and sum(codes.values()) == BURST, codes
        assert refused_at_once >= BURST // 2, codes  # at least half could never start in time
        assert late <= 0.25 * (refused_at_once + late), codes  # refusals come at once, not late
        overloaded = sample(server.url, "batchserve_rejected_total", model="decode", reason="overloaded")
        assert overloaded == refused_at_once
