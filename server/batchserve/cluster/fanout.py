"""Management through any worker applies to all of them (``--workers N``).

The worker that a management call reaches coordinates it: it holds the model name's lock
(``flock(2)`` on ``locks/<name>.lock``, so changes to one name from different workers run one
at a time), applies the change to itself (``LocalWorker``) and to every other worker over its
peer socket (``RemoteWorker``, the API of ``peers.py``), each call bounded by a timeout.

- PATCH: recorded in ``desired.json``, then applied on every worker.
- load / reload (``reload.py``: every version of the model): two phases. Every worker stages
  the new copies (builds, loads and warms them while the old ones serve); only if all did
  does each commit them (install them with the routing over them, and retire the old ones
  within the grace). If any failed, or could not be reached, or did not answer in time,
  every worker aborts (unloads the staged copies) and the old versions serve on everywhere:
  the call fails naming the worker and why.
- unload: recorded, then applied on every worker.
- routing (weights, shadows; promote, rollback): validated by the coordinator, recorded, then
  swapped in on every worker.

A worker that is down (restarting) cannot answer. A PATCH or an unload goes through on the
others and is reported (``workers.missed``); the restarted worker applies it when it starts,
from ``desired.json`` (``desired.apply_desired``). A load refuses to go through without every
worker (retry once ``/readyz`` is 200): otherwise the workers would serve different versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import httpx

from batchserve import reload
from batchserve.cluster import desired
from batchserve.cluster.rundir import Cluster
from batchserve.config import ModelConfig
from batchserve.errors import BatchserveError, LoadFailed
from batchserve.registry import ServedModel
from batchserve.state import AppState

log = logging.getLogger(__name__)

CONFIGURE_TIMEOUT_S = 10.0
"""A PATCH on one worker (it only changes settings)."""
LOAD_TIMEOUT_S = 600.0
"""Staging a version on one worker: reading, loading and warming a model can take minutes."""
SETTLE_TIMEOUT_S = 30.0
"""Beyond the shutdown grace: a commit or an unload drains the old version within the grace,
then unloads it; an abort unloads a staged copy."""


class Worker(Protocol):
    """One worker's management operations, each applied there alone."""

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    async def stage(self, name: str, stage_id: str) -> dict[str, Any]: ...
    async def commit(self, name: str, stage_id: str) -> dict[str, Any]: ...
    async def abort(self, name: str, stage_id: str) -> dict[str, Any]: ...
    async def unload(self, name: str) -> dict[str, Any]: ...
    async def route(self, name: str, routing: dict[str, Any]) -> dict[str, Any]: ...
    async def shadow_worst(self, name: str) -> dict[str, Any]: ...


class Unreachable(Exception):
    """The worker's peer socket is not there or refuses: it is down or restarting."""


class LocalWorker:
    """The operations on this process's registry (what the peer API serves; the coordinator's
    own part). A staged version waits here, by name, for its commit or abort."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._staged: dict[str, tuple[str, list[ServedModel]]] = {}
        self._aborted: deque[str] = deque(maxlen=64)
        """Stages aborted (maybe before they ended: a coordinator that gave up waiting)."""

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        models = self.state.registry.configure(name, changes)
        return {"config": models[-1].config.model_dump(mode="json")}

    async def stage(self, name: str, stage_id: str) -> dict[str, Any]:
        stale = self._staged.pop(name, None)
        if stale is not None:  # its coordinator never came back: don't keep the copies
            await reload.abort(self.state, stale[1])
        configs = await asyncio.to_thread(self._configs, name)
        models = await reload.stage(self.state, configs)
        if stage_id in self._aborted:
            await reload.abort(self.state, models)
            raise LoadFailed("aborted while it loaded")
        self._staged[name] = (stage_id, models)
        return {"state": "ready"}

    def _configs(self, name: str) -> list[ModelConfig]:
        configs = reload.repository_configs(self.state, name)
        if self.state.cluster is None:
            return configs
        # a restarted worker knows of no PATCH but the recorded ones
        return [c.model_copy(update=desired.overrides(self.state.cluster, c.key)) for c in configs]

    async def commit(self, name: str, stage_id: str) -> dict[str, Any]:
        staged = self._staged.get(name)
        if staged is None or staged[0] != stage_id:
            raise LoadFailed(f"no version of '{name}' staged as {stage_id!r:.40}")
        del self._staged[name]
        await reload.commit(self.state, staged[1])
        return {"state": "ready"}

    async def abort(self, name: str, stage_id: str) -> dict[str, Any]:
        self._aborted.append(stage_id)
        staged = self._staged.get(name)
        if staged is not None and staged[0] == stage_id:
            del self._staged[name]
            await reload.abort(self.state, staged[1])
        return {"state": "aborted"}

    async def unload(self, name: str) -> dict[str, Any]:
        model = await self.state.registry.unload(name, self.state.settings.shutdown_grace_s)
        return {"state": model.state}

    async def route(self, name: str, routing: dict[str, Any]) -> dict[str, Any]:
        router = self.state.router
        router.apply(name, router.check(name, routing["weights"], routing["shadows"]))
        return routing

    async def shadow_worst(self, name: str) -> dict[str, Any]:
        return self.state.shadows.worst(name)


class RemoteWorker:
    """Another worker, over its peer socket (``peers.py``); every call bounded by a timeout."""

    def __init__(self, cluster: Cluster, index: int, grace_s: float) -> None:
        self.socket = cluster.socket_path(index)
        self.settle_s = grace_s + SETTLE_TIMEOUT_S

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/config", changes, CONFIGURE_TIMEOUT_S)

    async def stage(self, name: str, stage_id: str) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/stage", {"id": stage_id}, LOAD_TIMEOUT_S)

    async def commit(self, name: str, stage_id: str) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/commit", {"id": stage_id}, self.settle_s)

    async def abort(self, name: str, stage_id: str) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/abort", {"id": stage_id}, self.settle_s)

    async def unload(self, name: str) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/unload", {}, self.settle_s)

    async def route(self, name: str, routing: dict[str, Any]) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/routing", routing, CONFIGURE_TIMEOUT_S)

    async def shadow_worst(self, name: str) -> dict[str, Any]:
        return await self._call(f"/peer/models/{name}/shadow", {}, CONFIGURE_TIMEOUT_S)

    async def _call(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://worker",
                                         timeout=timeout_s) as client:
                response = await client.post(path, json=body)
        except httpx.ConnectError as exc:
            raise Unreachable(f"not reachable (down or restarting): {exc}") from None
        except httpx.TimeoutException:
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:  # it died while answering, say
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        answer: dict[str, Any] = response.json()
        if response.is_error:
            raise _PeerError(answer.get("error", {}).get("message", response.text))
        return answer


class _PeerError(Exception):
    """The worker answered with an error (its message)."""


def workers(state: AppState, cluster: Cluster) -> dict[int, Worker]:
    """Every worker, by index: this one local, the others over their sockets."""
    grace_s = state.settings.shutdown_grace_s
    found: dict[int, Worker] = {i: RemoteWorker(cluster, i, grace_s) for i in cluster.others}
    found[cluster.index] = LocalWorker(state)
    return dict(sorted(found.items()))


@contextlib.asynccontextmanager
async def name_lock(cluster: Cluster, name: str) -> AsyncIterator[None]:
    """Hold ``name``'s lock across the workers (waiting for it off the event loop)."""
    fd = os.open(cluster.lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
    acquired = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
    try:
        await asyncio.shield(acquired)
    except BaseException:
        # Cancelled while waiting: the thread still takes the lock; closing the file frees it.
        acquired.add_done_callback(lambda _: os.close(fd))
        raise
    try:
        yield
    finally:
        os.close(fd)


Report = dict[str, Any]
"""``{"applied": [indices], "missed": {index: why}}``: which workers a change reached."""


async def configure_all(state: AppState, cluster: Cluster, name: str,
                        changes: dict[str, Any]) -> Report:
    async with name_lock(cluster, name):
        await asyncio.to_thread(desired.record_overrides, cluster, name, changes)
        return _report(await _each(workers(state, cluster), lambda w: w.configure(name, changes)))


async def unload_all(state: AppState, cluster: Cluster, name: str) -> Report:
    async with name_lock(cluster, name):
        await asyncio.to_thread(desired.record_unload, cluster, name)
        return _report(await _each(workers(state, cluster), lambda w: w.unload(name)))


async def route_all(state: AppState, cluster: Cluster, name: str, routing: dict[str, Any],
                    previous: dict[str, Any] | None) -> Report:
    """Set ``name``'s routing on every worker (each swaps it in at once), recorded first."""
    async with name_lock(cluster, name):
        await asyncio.to_thread(desired.record_routing, cluster, name, routing, previous)
        return _report(await _each(workers(state, cluster), lambda w: w.route(name, routing)))


async def shadow_worst_all(state: AppState, cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """The worst shadow items each worker kept of ``name`` (none from a worker that cannot say)."""
    async def one(worker: Worker) -> dict[str, Any]:
        try:
            return await worker.shadow_worst(name)
        except (BatchserveError, Unreachable, TimeoutError, ConnectionError, _PeerError):
            return {}

    return list(await asyncio.gather(*(one(w) for w in workers(state, cluster).values())))


async def load_all(state: AppState, cluster: Cluster, name: str,
                   configs: list[ModelConfig]) -> Report:
    """Stage ``name`` (``configs``, its entry in the repository file) on every worker, then
    commit it on every worker; or abort it on every worker (``LoadFailed``, naming who failed)
    and leave the old versions serving. The routing over the new versions is recorded (for a
    worker that restarts) where management had set it."""
    every = workers(state, cluster)
    stage_id = uuid.uuid4().hex
    async with name_lock(cluster, name):
        routing = state.router.reloaded(name, configs)  # a 400 before any work
        staged = await _each(every, lambda w: w.stage(name, stage_id))
        failed = {i: why for i, why in staged.items() if why is not None}
        if failed:
            await _each(every, lambda w: w.abort(name, stage_id))
            reasons = "; ".join(f"worker {i}: {why}" for i, why in failed.items())
            raise LoadFailed(f"model '{name}' failed to load on {len(failed)} of {len(every)} "
                             f"workers ({reasons}); every worker still serves the previous "
                             "version, if any")
        managed = None if routing is None or not state.router.managed(name) else routing.as_dict()
        await asyncio.to_thread(desired.record_load, cluster, name, configs, managed)
        return _report(await _each(every, lambda w: w.commit(name, stage_id)))


async def _each(every: dict[int, Worker],
                call: Callable[[Worker], Awaitable[dict[str, Any]]]) -> dict[int, str | None]:
    """``call(worker)`` on every worker at once; for each, ``None`` or why it failed."""
    async def one(index: int, worker: Worker) -> str | None:
        try:
            await call(worker)
        except BatchserveError as exc:  # this worker's own refusal
            return exc.message
        except (Unreachable, TimeoutError, ConnectionError, _PeerError) as exc:
            return str(exc)
        except Exception as exc:  # a bug here must not leave the others half-changed
            log.exception("management on worker %d failed", index)
            return f"{type(exc).__name__}: {exc}"
        return None

    outcomes = await asyncio.gather(*(one(i, worker) for i, worker in every.items()))
    return dict(zip(every, outcomes, strict=True))


def _report(outcomes: dict[int, str | None]) -> Report:
    return {"applied": [i for i, why in outcomes.items() if why is None],
            "missed": {str(i): why for i, why in outcomes.items() if why is not None}}
