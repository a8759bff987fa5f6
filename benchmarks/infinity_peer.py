"""Infinity (``infinity-emb``), the embedding benchmark's peer: installed into its own virtual
environment under benchmarks/results/venvs/infinity (git-ignored; a comparison target, not a
dependency), and started as a server on a model folder.

``INFINITY_TORCH`` says where its torch comes from:

- ``project`` (default): the venv gets a ``.pth`` file that puts this project's virtual
  environment last on its path, so ``pip install infinity-emb[server,torch]==0.0.78`` finds
  torch (and numpy, fastapi, ...) already there and installs only what Infinity pins itself
  (sentence-transformers 3.4.1, transformers 4.57.6, ...), into its own venv, ahead of ours.
  Infinity then runs the very torch build batchserve runs (the comparison is of the servers,
  not of two torch builds), and the venv takes ~260 MB instead of ~4.5 GB;
- ``own``: a plain venv; pip resolves torch 2.14.1 with its CUDA wheels from the local
  package mirror (~4.5 GB of disk; this machine had 8.8 GB free, shared).

Its server runs as ``infinity_emb v2`` with its defaults (the torch engine, its batching queue,
``torch.compile``, BetterTransformer where available, its warm-up) except: ``--batch-size``
(the sweep's), the device pinned to ``cpu``, routes under ``/v1`` (so the benchmark posts to
the same path on both servers), log level ``warning`` (no per-request access log, as
batchserve's launcher), and ``--no-vector-disk-cache``: on by default, it answers a text it has
seen from an SQLite cache, and the benchmark sends the same texts over and over.
``INFINITY_ARGS`` adds flags (e.g. ``--no-compile``), to check what a default costs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / "results" / "venvs" / "infinity"
PACKAGES = ["infinity-emb[server,torch]==0.0.78"]
TORCH = os.environ.get("INFINITY_TORCH", "project")
ARGS = shlex.split(os.environ.get("INFINITY_ARGS", ""))
OWN_TORCH_BYTES = 6 * 2**30
"""Free disk the ``own`` install wants (torch and its CUDA wheels unpack to ~4.5 GB)."""


def setup() -> Path:
    """The venv's ``infinity_emb`` command, installed once (again when the settings change)."""
    command = VENV / "bin" / "infinity_emb"
    stamp = VENV / ".installed"
    wanted = f"{' '.join(PACKAGES)} torch={TORCH}"
    if stamp.exists() and stamp.read_text() == wanted and command.exists():
        return command
    if TORCH not in ("project", "own"):
        raise RuntimeError(f"INFINITY_TORCH={TORCH!r}: 'project' or 'own'")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if TORCH == "own" and shutil.disk_usage(VENV.parent).free < OWN_TORCH_BYTES:
        raise RuntimeError(f"INFINITY_TORCH=own needs ~{OWN_TORCH_BYTES / 2**30:.0f} GB free at "
                           f"{VENV.parent} for torch and its CUDA wheels; use INFINITY_TORCH=project")
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter below our venv
    print(f"installing {' '.join(PACKAGES)} into {VENV} (torch: {TORCH}) ...", flush=True)
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    if TORCH == "project":
        ours = sysconfig.get_paths()["purelib"]  # this (the project's) venv's site-packages
        theirs = subprocess.run([str(VENV / "bin" / "python"), "-c",
                                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        # "zz": read after every other .pth, so the project's packages come last on the path
        Path(theirs, "zz_project_packages.pth").write_text(str(Path(ours).resolve()) + "\n")
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *PACKAGES], check=True)
    stamp.write_text(wanted)
    return command


def versions() -> dict[str, str]:
    """What the venv runs: Infinity's, torch's, transformers' and sentence-transformers' versions."""
    script = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
              "('infinity-emb', 'torch', 'transformers', 'sentence-transformers')}))")
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", script], capture_output=True, text=True,
                         check=True).stdout
    found: dict[str, str] = json.loads(out)
    return found


def command(folder: Path, port: int, batch_size: int) -> list[str]:
    return [str(VENV / "bin" / "infinity_emb"), "v2", "--model-id", str(folder),
            "--served-model-name", "minilm", "--host", "127.0.0.1", "--port", str(port),
            "--device", "cpu", "--engine", "torch", "--batch-size", str(batch_size),
            "--url-prefix", "/v1", "--log-level", "warning", "--no-vector-disk-cache", *ARGS]


@contextlib.contextmanager
def serve(folder: Path, batch_size: int, probe: bytes, log: Path, *,
          core: str | None = None) -> Iterator[str]:
    """Infinity on ``folder`` until the block ends, pinned to ``core`` when given; yields its URL
    once a POST of ``probe`` to its /v1/embeddings answers 200. Its output goes to ``log``."""
    port = harness.free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    prefix = ["taskset", "-c", core] if core is not None else []
    with log.open("ab") as output:
        # its own session, so that stopping it stops whatever it started
        process = subprocess.Popen([*prefix, *command(folder, port, batch_size)], cwd=ROOT, env=env,
                                   start_new_session=True, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            harness.wait_answer(f"{url}/v1/embeddings", probe, process, 600)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"infinity (batch size {batch_size}) did not start: {exc}\n{tail}") from None
        yield url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
