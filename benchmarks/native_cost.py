"""What compiling the request path's modules with mypyc would save: ``rsgi_cost.py`` against a
copy of ``server/batchserve`` whose hot modules are compiled, and against the source, in
alternating rounds.

batchserve ships pure Python; this measures the option. The copy is built in a temporary folder
(nothing in the tree changes): ``HOT`` compiled in place by mypyc (it needs gcc and Python's
headers), with the one change shipping it would need in the source: ``lifecycle.Adapter`` marked
``@mypyc_attr(allow_interpreted_subclasses=True)`` (the protocol adapters subclass it, and a
module mypyc did not compile may not subclass a compiled class otherwise). ``headers.py`` is left
out: mypyc 2.x crashes on its ``cls.__new__(cls)``.

Each round runs ``rsgi_cost.py`` once (ROUNDS=1) on each tree; the lines printed are each tree's
batchserve CPU µs per request and batchserve / lean floor by round (the floor measured in the
same process, so the ratio cancels most of the machine's load), and compiled / pure.

Usage: .venv/bin/python benchmarks/native_cost.py   (ROUNDS, REQUESTS; KEEP=1 keeps the build)
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

ROUNDS = int(os.environ.get("ROUNDS", "4"))
REQUESTS = os.environ.get("REQUESTS", "20000")
HOT = ["rsgi", "pipeline", "lifecycle", "bodies", "batcher", "execution", "load", "inflight",
       "metrics_bulk", "predict", "preprocessing", "responses"]
_MYPY_INI = """[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
"""
_ROW = re.compile(r"^\| (lean|batchserve) \| ([\d.]+) \|")


def build(folder: Path) -> Path:
    """A copy of the package with ``HOT`` compiled in place; the folder to put on PYTHONPATH."""
    package = folder / "batchserve"
    shutil.copytree(harness.ROOT / "server" / "batchserve", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    lifecycle = package / "lifecycle.py"
    text = lifecycle.read_text()
    text = text.replace("class Adapter(ABC):",
                        "@mypyc_attr(allow_interpreted_subclasses=True)\nclass Adapter(ABC):", 1)
    text = text.replace("from typing import Any\n",
                        "from typing import Any\n\nfrom mypy_extensions import mypyc_attr\n", 1)
    lifecycle.write_text(text)
    (folder / "mypy.ini").write_text(_MYPY_INI)
    mypyc = Path(sys.executable).parent / "mypyc"
    started = time.monotonic()
    subprocess.run([str(mypyc), "--config-file", "mypy.ini", *(f"batchserve/{m}.py" for m in HOT)],
                   cwd=folder, check=True, env={**os.environ, "PYTHONPATH": str(folder)},
                   stdout=subprocess.DEVNULL)
    print(f"mypyc compiled {len(HOT)} modules in {time.monotonic() - started:.0f} s", flush=True)
    return folder


def measure(pythonpath: Path) -> tuple[float, float]:
    """One ``rsgi_cost.py`` round on the package under ``pythonpath``: batchserve's CPU µs per
    request, and the lean floor's."""
    out = subprocess.run([sys.executable, "rsgi_cost.py"], cwd=harness.ROOT / "benchmarks",
                         env={**os.environ, "PYTHONPATH": str(pythonpath), "ROUNDS": "1",
                              "REQUESTS": REQUESTS}, check=True, capture_output=True, text=True).stdout
    found = {m[1]: float(m[2]) for line in out.splitlines() if (m := _ROW.match(line))}
    return found["batchserve"], found["lean"]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="batchserve-native-"))
    try:
        compiled = build(folder)
        import batchserve  # noqa: F401 - the source tree's, for its path

        source = Path(sys.modules["batchserve"].__file__ or "").parent.parent
        us: dict[str, list[float]] = {"pure": [], "compiled": []}
        ratios: dict[str, list[float]] = {"pure": [], "compiled": []}
        for _ in range(ROUNDS):
            for name, path in (("pure", source), ("compiled", compiled)):
                own, lean = measure(path)
                us[name].append(own)
                ratios[name].append(own / lean)
    finally:
        if os.environ.get("KEEP") == "1":
            print(f"the compiled copy is kept: PYTHONPATH={folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {harness.commit()}, "
          f"{os.cpu_count()} cores; {REQUESTS} requests a round, {ROUNDS} alternating rounds\n")
    print("| batchserve | CPU us / request by round | / lean floor by round | median / lean |\n"
          "|---|---|---|---|")
    for name in us:
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in us[name])} | "
              f"{' / '.join(f'{r:.2f}' for r in ratios[name])} | {statistics.median(ratios[name]):.2f} |")
    gain = statistics.median(ratios["pure"]) / statistics.median(ratios["compiled"])
    print(f"\npure / compiled (of the medians over the lean floor): {gain:.2f}x")
    harness.save_results("native_cost", {"us": us, "ratios": ratios, "commit": harness.commit()})


if __name__ == "__main__":
    main()
