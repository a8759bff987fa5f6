"""The inference routes are served ahead of FastAPI's middleware and routing (fastpath.py):
which paths take the fast path, and that they skip the middleware every other route runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchserve.fastpath import BatchserveApp
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support import make_client, wait_ready


@pytest.mark.parametrize(("path", "expected"), [
    ("/predict", ("predict", None, None)),
    ("/predict/echo", ("predict", "echo", None)),
    ("/predict/echo/versions/2", ("predict", "echo", "2")),
    ("/v2/models/echo/infer", ("v2", "echo", None)),
    ("/v2/models/echo/versions/1/infer", ("v2", "echo", "1")),
    ("/predict/", None), ("/predict/a/b", None), ("/predict/echo/versions/", None),
    ("/predict/echo/versions/1/x", None), ("/v2/models/echo/versions//infer", None),
    ("/v2/models//infer", None), ("/v2/models/echo/ready", None), ("/models/echo", None),
])
def test_which_paths_take_the_fast_path(tmp_path: Path, path: str,
                                        expected: tuple[str, str | None, str | None] | None) -> None:
    client = make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": str(tmp_path)}])
    app = client.app
    assert isinstance(app, BatchserveApp) and app.fast_path is not None
    names = {id(app.fast_path.predict): "predict", id(app.fast_path.v2): "v2"}
    found = app.fast_path.match(path)
    assert (None if found is None else (names[id(found[0])], found[1], found[2])) == expected


def test_inference_skips_the_middleware_other_routes_run(tmp_path: Path) -> None:
    seen: list[str] = []

    class Recorder:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    client = make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": str(tmp_path)}])
    client.app.add_middleware(Recorder)  # type: ignore[attr-defined]
    with client:
        wait_ready(client)
        seen.clear()
        assert client.post("/predict/echo", json={"inputs": [1]}).json()["outputs"] == [2]
        v2 = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
        assert client.post("/v2/models/echo/infer", json=v2).status_code == 200
        assert seen == []
        assert client.post("/v2/models/echo/versions/1/infer", json=v2).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert seen == ["/healthz"]
