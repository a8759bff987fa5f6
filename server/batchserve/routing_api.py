"""The management API of a model's versions' traffic (``routing.py``): set the weights and the
shadows, promote a version (it takes all the traffic), roll the latest change back.

Each change is validated whole before anything changes (a 400 naming what is wrong, and the
routing as it was), then swapped in with one assignment, on every worker of the server
(``cluster/fanout.py``, recorded in ``desired.json`` for a worker that restarts). A request is
routed by the old routing or the new, never dropped or failed by the change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from batchserve.cluster import desired, fanout
from batchserve.errors import MalformedRequest, describe_validation_errors
from batchserve.metrics_multiprocess import read_metrics
from batchserve.routing import Routing
from batchserve.shadow import WORST_KEPT
from batchserve.shadow_summary import merge_worst, summarise
from batchserve.state import AppState


class RoutingBody(BaseModel):
    """``PUT /v2/repository/models/{name}/routing``: either or both; what is left out stays."""

    model_config = ConfigDict(extra="forbid")
    weights: dict[str, float] | None = None
    """Each version's fraction of the traffic; they sum to 1."""
    shadows: dict[str, float] | None = None
    """Each shadow version's fraction of the answered requests, copied to it (``{}``: none)."""

    def as_routing(self) -> dict[str, Any]:
        return {"weights": self.weights, "shadows": self.shadows}


def add_routing_routes(router: APIRouter, state: AppState,
                       authorize: Callable[[Request], None]) -> None:
    async def apply(name: str, routing: Routing, previous: Routing | None) -> dict[str, Any]:
        """Swap ``routing`` in for ``name`` here, or on every worker."""
        body = routing.as_dict()
        if state.cluster is None:
            state.router.apply(name, routing)
            return {"name": name, **body}
        before = None if previous is None else previous.as_dict()
        report = await fanout.route_all(state, state.cluster, name, body, before)
        return {"name": name, **body, "workers": report}

    def current(name: str) -> Routing:
        routing = state.router.routing(name)
        if routing is None:
            return state.router.check(name, None, None)  # the 404 or 400 that says why
        return routing

    @router.get("/v2/repository/models/{name}/routing", tags=["management"],
                summary="A model's traffic over its versions")
    async def get_routing(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        return {"name": name, **current(name).as_dict()}

    @router.put("/v2/repository/models/{name}/routing", tags=["management"],
                summary="Set a model's weights (summing to 1) and shadows")
    async def set_routing(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        try:
            body = RoutingBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise MalformedRequest(describe_validation_errors(exc.errors())) from None
        before = current(name)
        return await apply(name, state.router.check(name, body.weights, body.shadows), before)

    @router.post("/v2/repository/models/{name}/versions/{version}/promote", tags=["management"],
                 summary="One version takes all of a model's traffic")
    async def promote(name: str, version: str, request: Request) -> dict[str, Any]:
        authorize(request)
        before = current(name)
        return await apply(name, state.router.promoted(name, version), before)

    @router.get("/v2/repository/models/{name}/shadow", tags=["management"],
                summary="How far each shadow version's outputs are from the primaries'")
    async def shadow_summary(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        current(name)  # 404 or 400 for a model without versions
        if state.cluster is None:
            worst = state.shadows.worst(name)
        else:
            worst = merge_worst(await fanout.shadow_worst_all(state, state.cluster, name), WORST_KEPT)
        return summarise(await read_metrics(state), name, worst)

    @router.post("/v2/repository/models/{name}/rollback", tags=["management"],
                 summary="Restore the routing the latest change replaced")
    async def rollback(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        before = current(name)
        if state.cluster is not None:  # what the server as a whole had, whichever worker answers
            records = await asyncio.to_thread(desired.read_routing, state.cluster)
            recorded = records.get(name, {}).get("previous")
            if recorded is not None:
                previous = state.router.check(name, recorded["weights"], recorded["shadows"])
                return await apply(name, previous, before)
        return await apply(name, state.router.previous(name), before)
