"""What the benchmark scripts share: a server process (the planner's launcher), wrk, /metrics, the commit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from batchserve_planning.load.scrape import wait_ready
from batchserve_planning.loadtest import cpu_set
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The short commit; $COMMIT when set (a tree copied to another machine, whose git may be stale)."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        found = ""
    return found or "unknown"


_DEMO = {"diabetes": ("diabetes.joblib", "build_diabetes.py"),
         "resnet50": ("resnet50.safetensors", "build_resnet50.py"),
         "transformer": ("transformer", "build_transformer.py"),
         "minilm": ("minilm", "build_minilm.py")}


def demo_artifact(name: str) -> Path:
    """A demo model's artifact under models/artifacts, built by its models/build_*.py if missing."""
    filename, script = _DEMO[name]
    path = ROOT / "models" / "artifacts" / filename
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "models" / script), str(path)], check=True)
    return path


def diabetes_rows(path: Path) -> Path:
    """scikit-learn's diabetes data, its first 200 rows, one JSON array a line at ``path``: the
    row inputs the diabetes benchmarks send."""
    from sklearn.datasets import load_diabetes

    path.write_text("".join(json.dumps(row) + "\n" for row in load_diabetes().data[:200].tolist()))
    return path


DIABETES_MODEL = """[repository]
root = "{root}"

[[models]]
name = "diabetes"
backend = "sklearn"
path = "{root}/artifacts/diabetes.joblib"
max_batch_size = %d
max_wait_ms = 0
instances = 1
"""
"""The diabetes model at one worker, one instance, no wait, and the batch cap given (``%d``)."""


def workspace(name: str, max_batch_size: int) -> tuple[Path, Path]:
    """A fresh ``benchmarks/results/<name>-<time>`` folder, and its ``models.toml``: the diabetes
    model (``DIABETES_MODEL``) at ``max_batch_size``, ``{root}`` the model repository."""
    work = ROOT / "benchmarks" / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    config = work / "models.toml"
    config.write_text((DIABETES_MODEL % max_batch_size).format(root=ROOT / "models"))
    return work, config


def save_results(name: str, data: object, folder: Path = ROOT / "benchmarks" / "results") -> Path:
    """Write ``data`` as ``<folder>/<name>-<time>.json`` (the folder is git-ignored); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def wait_answer(url: str, body: bytes, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until a POST of the JSON ``body`` to ``url`` answers 200 (servers without /readyz). Raises
    RuntimeError when ``process`` exits first (with the end of its stderr, where piped) or when
    ``timeout_s`` passes; stopping the process is the caller's."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode()[-2000:] if process.stderr else ""
            raise RuntimeError(f"{process.args!r:.200} exited: {error}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.post(url, content=body, headers={"Content-Type": "application/json"},
                          timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g} s")


def free_port() -> int:
    """A loopback port for a peer server (batchserve's own launcher picks its port itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cores(core: str | None) -> set[int] | None:
    """taskset's notation (``0``, ``0-1``, ``0,2``) as a set of cores; None for None."""
    return None if core is None else cpu_set(core)


@contextlib.contextmanager
def process(command: Sequence[str], ready_url: str, *,
            core: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a peer server; pinned to ``core`` with taskset when given) until the block
    ends, once ``ready_url`` answers 200."""
    prefix = ["taskset", "-c", core] if core is not None else []
    child = subprocess.Popen([*prefix, *command], cwd=ROOT)
    try:
        wait_ready(ready_url, 180.0, alive=lambda: child.poll() is None, interval_s=0.2)
        yield child
    finally:
        child.terminate()
        child.wait(timeout=60)


@contextlib.contextmanager
def serve(config: Path, port: int | None = None, *, core: str | None = None,
          grace_s: float = 30.0) -> Iterator[ManagedServer]:
    """``batchserve serve`` on ``config`` (the planner's launcher), pinned to ``core`` when given,
    until the block ends; on ``port``, or a free one."""
    server = ManagedServer(config, port=port, cpus=cores(core), grace_s=grace_s)
    try:
        server.wait_ready(timeout_s=180.0)
        yield server
    finally:
        server.stop(timeout_s=60.0)


@contextlib.contextmanager
def batchserve(config_text: str, port: int | None = None, *,
               core: str | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``batchserve serve`` on a models.toml holding ``config_text``; yields its URL and process."""
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "models.toml"
        config.write_text(config_text)
        with serve(config, port, core=core) as server:
            yield server.url, server.process


def wrk(url: str, *, connections: int, duration_s: float, script: str | Path, core: str | None = None,
        env: dict[str, str] | None = None, timeout: str = "30s", threads: int = 1) -> dict[str, float]:
    """One wrk run: requests/s, p50/p99 in ms, and the counts of non-2xx answers and timeouts.
    ``script``: a Lua file, or its name in benchmarks/; ``threads``: wrk's own (one a core)."""
    prefix = ["taskset", "-c", core] if core is not None else []
    out = subprocess.run(
        [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency",
         "--timeout", timeout, "-s", str(ROOT / "benchmarks" / script), url],
        check=True, capture_output=True, text=True, env=env).stdout

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no {label} latency in wrk's output:\n{out}")
        return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeouts = (float(n) for n in errors.groups()) if errors else (0.0,) * 4
    return {"rps": float(rps.group(1)), "p50_ms": latency_ms("50%"), "p99_ms": latency_ms("99%"),
            "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0, "timeouts": timeouts,
            "socket_errors": connect + read + write + timeouts}


class UncleanRun(RuntimeError):
    """A wrk run counted answers that were not 2xx, or socket errors: its RPS is not a rate of
    served requests."""


def check_clean(result: dict[str, float], label: str) -> None:
    """Raise ``UncleanRun`` unless every request of the wrk run ``result`` got a 2xx answer."""
    if result["non_2xx"] or result["socket_errors"]:
        raise UncleanRun(f"{label}: {result['non_2xx']:.0f} non-2xx answers and "
                         f"{result['socket_errors']:.0f} socket errors (of them "
                         f"{result['timeouts']:.0f} timeouts); RPS {result['rps']:,.0f} is not all served")


def measured_wrk(target: str, *, warmup_s: float, duration_s: float, connections: int,
                 script: str | Path, model: str | None = None, core: str | None = None,
                 env: dict[str, str] | None = None, pids: Sequence[int] = (),
                 threads: int = 1) -> dict[str, Any]:
    """A warm-up wrk run, then the measured one (its result, as ``wrk`` gives it). With ``model``
    (a batchserve model at ``target``'s server), also its ``mean_batch`` and ``padding`` (mean
    padding ratio; 0 for models without one) over the measured run, from /metrics. With ``pids``
    (the server's processes: one, or a supervisor and its workers), also ``cpu_us_per_request``:
    their CPU time (user + system, all threads) over the measured run, over the requests
    answered — less sensitive than RPS to other work on the machine; ``cpu_s`` each one's CPU
    seconds; ``wrk_cpu_us_per_request`` wrk's own; and the machine's ``idle`` and ``steal``
    shares of its CPU time (near-zero idle: the cores, not the server, capped the run)."""
    def load(seconds: float) -> dict[str, Any]:
        return wrk(target, connections=connections, duration_s=seconds, script=script, core=core,
                   env=env, threads=threads)

    load(warmup_s)
    if not pids:
        measured = load
    else:
        def measured(seconds: float) -> dict[str, Any]:
            import psutil

            before, wrk_before, machine_before = cpu_seconds(pids), _children_cpu(), psutil.cpu_times()
            result = load(seconds)
            after, wrk_after, machine_after = cpu_seconds(pids), _children_cpu(), psutil.cpu_times()
            requests = max(1.0, result["rps"] * seconds)
            result["cpu_s"] = [a - b for a, b in zip(after, before, strict=True)]
            result["cpu_us_per_request"] = 1e6 * sum(result["cpu_s"]) / requests
            result["wrk_cpu_us_per_request"] = 1e6 * (wrk_after - wrk_before) / requests
            result["idle"] = _share("idle", machine_before, machine_after)
            result["steal"] = _share("steal", machine_before, machine_after)
            return result
    if model is None:
        return measured(duration_s)
    parts = urllib.parse.urlsplit(target)
    url = f"{parts.scheme}://{parts.netloc}"
    names = ("batchserve_batch_size_sum", "batchserve_batch_size_count",
             "batchserve_padding_ratio_sum", "batchserve_padding_ratio_count")
    before = [metric(url, name, model) for name in names]
    result = measured(duration_s)
    rows, batches, padding, padded = (metric(url, name, model) - was for name, was in zip(names, before,
                                                                                         strict=True))
    result["mean_batch"] = rows / batches if batches else 0.0
    result["padding"] = padding / padded if padded else 0.0
    return result


def cpu_seconds(pids: Sequence[int]) -> list[float]:
    """User + system seconds of each process (0 for one that is gone)."""
    import psutil

    times = []
    for pid in pids:
        try:
            used = psutil.Process(pid).cpu_times()
            times.append(used.user + used.system)
        except psutil.NoSuchProcess:
            times.append(0.0)
    return times


def _children_cpu() -> float:
    """User + system seconds of this process's waited-for children (wrk, once it ended)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _share(field: str, before: Any, after: Any) -> float:
    """A field's share of the machine's CPU time between two ``psutil.cpu_times()``."""
    total = sum(after) - sum(before)
    return (getattr(after, field, 0.0) - getattr(before, field, 0.0)) / total if total > 0 else 0.0


def metric(url: str, name: str, model: str) -> float:
    """One sample of batchserve's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


SPIN = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass\n"
LAUNCH = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {spin!r}], "
          "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")


@contextlib.contextmanager
def background_load(on: bool) -> Iterator[None]:
    """One process spinning per core (for at most an hour), outside this process's tree: each is
    started by a launcher that exits, in a session of its own, so a contention probe in this
    process or in its children sees it as other work."""
    pids = [int(subprocess.run([sys.executable, "-c", LAUNCH.format(spin=SPIN)], capture_output=True,
                               text=True, check=True, timeout=30).stdout)
            for _ in range(os.cpu_count() or 1)] if on else []
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
