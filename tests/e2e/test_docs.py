"""The docs pages on a host without internet: /docs and /redoc load their assets from the server
itself, and headless Chromium, its network cut off from everything but loopback, renders them
against a real server with the /predict operations listed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support import running_server, write_models

_OFFLINE = [
    # Every host name but the loopback address fails to resolve, and whatever is not loopback
    # goes to a proxy that is not there: a CDN asset cannot load.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "Debian's chromium is not installed (apt-get install chromium; scripts/ci-services.sh does)"
        if os.environ.get("BATCHSERVE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (BATCHSERVE_REQUIRE_SERVICES=1; scripts/ci-services.sh sets it up)")
        pytest.skip(reason)
    return found


def render(url: str, profile: Path, output: str = "--dump-dom") -> str:
    """The page's DOM once its scripts have run (virtual time lets them finish loading), or
    with ``output="--screenshot=FILE"``, a picture of it."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         *_OFFLINE, "--virtual-time-budget=20000", "--window-size=1280,1600", output, url],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_docs_pages_name_only_assets_of_this_server(make_client_app: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = make_client_app.get(page).text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls, html
        assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        for url in urls:
            if url.startswith("/docs-assets/"):
                assert make_client_app.get(url).status_code == 200, url


@pytest.fixture
def make_client_app(tmp_path: Path) -> TestClient:
    from tests.support import make_client

    return make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x"}])


@pytest.mark.slow
def test_chromium_without_network_renders_the_docs_with_the_predict_operations(tmp_path: Path) -> None:
    chromium()
    config = write_models(tmp_path / "models.toml", [{"name": "echo", "backend": "echo", "path": "x"}])
    with running_server(config) as server:
        docs = render(f"{server.url}/docs", tmp_path / "profile")
        screenshot = tmp_path / "docs.png"
        render(f"{server.url}/docs", tmp_path / "profile", f"--screenshot={screenshot}")
        redoc = render(f"{server.url}/redoc", tmp_path / "profile")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    # Swagger UI drew one operation block per route, /predict's two among them.
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', docs))
    assert {"/predict", "/predict/{model}", "/v2/models/{name}/infer"} <= paths, docs[-3000:]
    assert "Predict with the model named in the body" in redoc, redoc[-3000:]
    assert screenshot.stat().st_size > 10_000  # a page with content, not a blank one
