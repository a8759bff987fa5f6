"""batchserve against peer servers on the diabetes model at 64 connections, in one run.

Peers, each installed by this script into its own virtual environment under
benchmarks/results/venvs/ (git-ignored; comparison targets, not dependencies),
each with the scikit-learn this project uses (the same pickle loads everywhere):

- LitServe 0.2.19 (benchmarks/peers/litserve_app.py), max_batch_size 64, batch_timeout 5 ms;
- Ray Serve 2.60 (benchmarks/peers/ray_app.py), @serve.batch 64 / 5 ms, one replica, num_cpus 1;
- Triton via nvidia-pytriton 0.7.0 (benchmarks/peers/pytriton_app.py), dynamic batcher 64 / 5 ms,
  in a Python 3.12 venv (pyenv's 3.12.1; pytriton fails on 3.11.7 here) with that Python's lib
  folder on LD_LIBRARY_PATH for Triton's Python backend stub (libpython3.12.so).

Each server is pinned to SERVER_CORE (all its processes), wrk (-t1) to LOAD_CORE; one
10-feature row per POST, WARMUP_S then DURATION_S at each of CONNECTIONS (64; a list such as
1,8,64,256 also plots throughput against p99 per server); batchserve (max_batch_size 64,
max_wait_ms 0) and the peers alternate, ROUNDS times.

Usage: .venv/bin/python benchmarks/peers.py [--setup-only] [PEER ...]   (needs wrk)
Prints a markdown table and writes benchmarks/results/peers-<time>.json.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / "benchmarks" / "results" / "venvs"
APPS = ROOT / "benchmarks" / "peers"
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
CONNECTIONS = [int(c) for c in os.environ.get("CONNECTIONS", "64").split(",")]
"""Connection levels measured on each server start; several give a throughput/latency plot."""
DURATION_S = int(os.environ.get("DURATION_S", "10"))
WARMUP_S = int(os.environ.get("WARMUP_S", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
PORT = int(os.environ.get("PORT", "0"))
"""0: a free port for each server start (other work on this machine takes fixed ones)."""
PYTHON_312 = Path(os.environ.get("PYTHON_312",
                                  Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python3.12"))


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


PEERS: dict[str, dict[str, Any]] = {
    "litserve": {"python": sys.executable, "packages": ["litserve==0.2.19"], "app": "litserve_app.py",
                 "path": "/predict", "lua": ROOT / "benchmarks" / "post.lua"},
    "rayserve": {"python": sys.executable, "packages": ["ray[serve]==2.60.0"], "app": "ray_app.py",
                 "path": "/predict", "lua": ROOT / "benchmarks" / "post.lua"},
    "triton": {"python": str(PYTHON_312), "packages": ["nvidia-pytriton==0.7.0"], "app": "pytriton_app.py",
               "path": "/v2/models/diabetes/infer", "lua": APPS / "triton.lua"},
}


def setup(peer: str) -> Path:
    """The peer's venv python, created and installed once."""
    spec = PEERS[peer]
    venv = VENVS / peer
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join([*spec["packages"], f"scikit-learn=={_version('scikit-learn')}",
                       f"joblib=={_version('joblib')}"])
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    base = spec["python"]
    if base == sys.executable:  # a venv's python: make the new venv from the interpreter below it
        base = getattr(sys, "_base_executable", sys.executable)
    if not Path(base).exists():
        raise RuntimeError(f"{peer}: needs {base}")
    print(f"installing {peer} into {venv} ...", flush=True)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *wanted.split()], check=True)
    stamp.write_text(wanted)
    return python


def _env(peer: str) -> dict[str, str]:
    env = dict(os.environ)
    if peer == "triton":
        lib = str(PYTHON_312.parent.parent / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH")) if p)
    return env


def _start(command: list[str], env: dict[str, str], port: int,
           probe: tuple[str, bytes]) -> subprocess.Popen[bytes]:
    # Its own session, so that stopping it stops every process it started (Ray, Triton).
    process = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command], cwd=ROOT, env=env,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path, body = probe
    try:
        harness.wait_answer(f"http://127.0.0.1:{port}{path}", body, process, 240)
    except RuntimeError:
        if process.poll() is None:
            _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _body(lua: Path) -> bytes:
    return lua.read_text().split("wrk.body = '")[1].split("'")[0].encode()


def _wrk(url: str, lua: Path, connections: int) -> dict[str, float]:
    return harness.measured_wrk(url, warmup_s=WARMUP_S, duration_s=DURATION_S, connections=connections,
                                script=lua, core=LOAD_CORE)


def measure_peer(peer: str, artifact: Path, config: Path) -> dict[int, dict[str, float]]:
    if peer == "batchserve":
        port = PORT or harness.free_port()
        lua = ROOT / "benchmarks" / "post.lua"
        with harness.serve(config, port, core=SERVER_CORE):
            return {c: _wrk(f"http://127.0.0.1:{port}/predict", lua, c) for c in CONNECTIONS}
    with running(peer, artifact) as (url, lua, _):
        return {c: _wrk(url, lua, c) for c in CONNECTIONS}


@contextlib.contextmanager
def running(peer: str, artifact: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``peer`` (installed by ``setup``) serving ``artifact``, pinned to SERVER_CORE, until the
    block ends: its inference URL, the wrk script that posts to it, and its process (the leader
    of its session: Ray and Triton start more)."""
    spec = PEERS[peer]
    port = PORT or harness.free_port()
    # Triton: http, grpc and metrics ports
    ports = [port] if peer != "triton" else [port, harness.free_port(), harness.free_port()]
    command = [str(VENVS / peer / "bin" / "python"), str(APPS / spec["app"]), str(artifact), *map(str, ports)]
    path, lua = spec["path"], spec["lua"]
    process = _start(command, _env(peer), port, (path, _body(lua)))
    try:
        yield f"http://127.0.0.1:{port}{path}", lua, process
    finally:
        _stop(process)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    peers = args or list(PEERS)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    installed = []
    for peer in peers:
        try:
            setup(peer)
            installed.append(peer)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"{peer}: not installed: {exc}", file=sys.stderr)
    if "--setup-only" in sys.argv:
        return
    artifact = harness.demo_artifact("diabetes")
    runs: dict[str, list[dict[int, dict[str, float]]]] = {p: [] for p in ["batchserve", *installed]}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "models.toml"
        config.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "diabetes"\n'
                          f'backend = "sklearn"\npath = "{artifact}"\nmax_batch_size = 64\n'
                          "max_queue = 4096\n")
        for _ in range(ROUNDS):
            for peer in runs:
                if peer in failures:
                    continue
                try:
                    runs[peer].append(measure_peer(peer, artifact, config))
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    failures[peer] = str(exc)[-1500:]
                    print(f"{peer}: failed: {failures[peer]}", file=sys.stderr)
    report(runs, failures)


def report(runs: dict[str, list[dict[int, dict[str, float]]]], failures: dict[str, str]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{date}, commit {commit}, {machine}; servers on core {SERVER_CORE}, wrk -t1 on core "
          f"{LOAD_CORE}, {ROUNDS} rounds of {DURATION_S} s after {WARMUP_S} s per connection level\n")
    print("| connections | server | round | RPS | p50 ms | p99 ms | non-2xx | batchserve RPS / this | "
          "this p99 / batchserve's |")
    print("|---|---|---|---|---|---|---|---|---|")
    ours = runs["batchserve"]
    summary: dict[str, Any] = {"date": date, "commit": commit, "machine": machine, "runs": runs,
                               "failures": failures, "ratios": {}}
    for connections in CONNECTIONS:
        for peer, results in runs.items():
            for index, by_level in enumerate(results):
                result, mine = by_level[connections], ours[index][connections] if index < len(ours) else None
                ratio = f"{mine['rps'] / result['rps']:.2f}" if mine and result['rps'] else "—"
                p99 = f"{result['p99_ms'] / mine['p99_ms']:.2f}" if mine else "—"
                print(f"| {connections} | {peer} | {index + 1} | {result['rps']:,.0f} | "
                      f"{result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
                      f"{result['non_2xx'] + result['timeouts']:.0f} | {ratio} | {p99} |")
            if peer != "batchserve" and results and ours:
                pairs = [(m[connections], r[connections]) for m, r in zip(ours, results, strict=False)
                         if r[connections]["rps"] > 0]  # a peer that answered nothing has no ratio
                if pairs:
                    summary["ratios"].setdefault(peer, {})[connections] = {
                        "rps": sum(m["rps"] / r["rps"] for m, r in pairs) / len(pairs),
                        "p99": sum(r["p99_ms"] / m["p99_ms"] for m, r in pairs) / len(pairs)}
    for peer, levels in summary["ratios"].items():
        for connections, ratio in levels.items():
            print(f"\n{connections} connections: batchserve / {peer} = {ratio['rps']:.2f}x the RPS; "
                  f"{peer}'s p99 is {ratio['p99']:.2f}x ours")
    for peer, reason in failures.items():
        print(f"\n{peer} failed: {reason.splitlines()[-1] if reason else ''}")
    stem = harness.save_results("peers", summary).with_suffix("")
    if len(CONNECTIONS) > 1:
        plot(runs, stem.with_suffix(".png"), f"{date}, commit {commit}")
    print(f"wrote {stem}.json" + (f" and {stem}.png" if len(CONNECTIONS) > 1 else ""))


def plot(runs: dict[str, list[dict[int, dict[str, float]]]], path: Path, note: str) -> None:
    """Throughput against p99 per server, one point per connection level (first round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for peer, results in runs.items():
        if not results:
            continue
        levels = sorted(results[0])
        axes.plot([results[0][c]["rps"] for c in levels], [results[0][c]["p99_ms"] for c in levels],
                  marker="o", label=peer)
        for c in levels:
            axes.annotate(str(c), (results[0][c]["rps"], results[0][c]["p99_ms"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("throughput (requests/s, log)")
    axes.set_ylabel("p99 latency (ms, log)")
    axes.set_title(f"diabetes, one row per request; labels: connections\n{note}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
