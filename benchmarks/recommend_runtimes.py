"""``recommend --runtimes torch,onnxruntime`` on a demo model: what it picks, each runtime and
precision's best throughput against torch float32's in the same run, their drift, and the re-run.

It runs ``batchserve recommend`` once with the runtime and precision in the search (the ONNX
graphs exported by recommend itself, into the report folder), with the model's inputs and SLO of
``recommend_check.py``, then reads results.json: per variant (runtime, precision) the best
candidate's inferences/s within the SLO and its ratio to torch float32's best, the drift from
torch float32 (recomputed here from the outputs results.json keeps, and compared with recommend's
own figures), what ``--max-drift`` left out, the pick, and whether its re-run held.

Usage: .venv/bin/python benchmarks/recommend_runtimes.py
  MODEL=minilm (or resnet50, sentiment)  BUDGET_S=600  MAX_DRIFT (minilm: cosine=0.98; resnet50: none)
  CONFIG=models/models.toml  EXTRA="--max-batch-cap 16" (more recommend flags)
Prints a markdown table and keeps the report folder under benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from batchserve.drift import DRIFTS
from recommend_check import MODELS

ROOT = Path(__file__).resolve().parents[1]
MAX_DRIFT = {"minilm": "cosine=0.98", "sentiment": "top1=0.9"}
SLO_MS = {"sentiment": 200}


def main() -> int:
    model = os.environ.get("MODEL", "minilm")
    spec = MODELS.get(model, MODELS["minilm"])
    out = ROOT / "benchmarks" / "results" / f"recommend-runtimes-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "batchserve", "recommend", "--config",
               os.environ.get("CONFIG", str(ROOT / "models" / "models.toml")), "--model", model,
               "--inputs", spec["inputs"](out), "--slo-p99-ms", str(SLO_MS.get(model, spec["slo"])),
               "--budget-s", os.environ.get("BUDGET_S", "600"), "--runtimes", "torch,onnxruntime",
               "--no-progress", "--out", str(out), *shlex.split(os.environ.get("EXTRA", ""))]
    limit = os.environ.get("MAX_DRIFT", MAX_DRIFT.get(model, ""))
    if limit:
        command += ["--max-drift", limit]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    (out / "stderr.log").write_text(done.stderr)
    if done.returncode not in (0, 1, 3):
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    results = json.loads((out / "results.json").read_text())
    print(summary(results, done.returncode, time.monotonic() - started, " ".join(command[3:])))
    return 0


def summary(results: dict[str, Any], code: int, seconds: float, command: str) -> str:
    accuracy = results["accuracy"]
    reference = np.asarray(accuracy["reference_outputs"])
    candidates = results["candidates"]
    variants: dict[str, list[dict[str, Any]]] = {}
    for outcome in candidates:
        c = outcome["candidate"]
        variants.setdefault(f"{c['runtime']} {c['dtype']}", []).append(outcome)
        if outcome["outputs"] is not None:
            recomputed = DRIFTS[accuracy["measure"]](reference, np.asarray(outcome["outputs"]))
            assert recomputed == outcome["drift"], (outcome["label"], recomputed, outcome["drift"])

    def best(outcomes: list[dict[str, Any]]) -> float | None:
        rates = [o["best"]["rows_per_s"] for o in outcomes if o["best"]]
        return max(rates) if rates else None

    baseline = best(variants.get("torch float32", []))
    lines = [f"`batchserve {command}`", "",
             f"{results['date']}; {len(candidates)} candidates in {results['elapsed_s']:.0f} s "
             f"(budget {results['budget_s']:.0f} s; this script {seconds:.0f} s); exit {code}.", "",
             "| runtime, precision | candidates | best inferences/s within SLO | vs torch float32 | drift "
             "(first candidate) | left out |", "|---|---|---|---|---|---|"]
    for name, outcomes in variants.items():
        rate = best(outcomes)
        drift: dict[str, float] = next((o["drift"] for o in outcomes if o["drift"]), {})
        excluded = next((o["excluded"] for o in outcomes if o["excluded"]), "")
        ratio = f"{rate / baseline:.2f}x" if rate and baseline else "—"
        lines.append(f"| {name} | {len(outcomes)} | {f'{rate:,.1f}' if rate else '—'} | {ratio} | "
                     + ", ".join(f"{k} {v:.4g}" for k, v in drift.items()) + f" | {excluded[:90]} |")
    for graph in results["runtimes"]:
        lines.append(f"\nONNX {graph['precision']}: {graph['source']}, {graph['seconds']:.0f} s.")
    if results["skipped"]:
        lines.append(f"\nNot run for lack of budget: {'; '.join(results['skipped'])}.")
    if results["pick"] is not None:
        pick = candidates[results["pick"]]
        check = results["verification"] or {}
        lines += ["", f"Pick: **{pick['label']}**, predicted {results['predicted']['rows_per_s']:,.1f}/s; "
                  f"re-run {check.get('measured_rows_per_s', 0):,.1f}/s (ratio {check.get('ratio', 0):.2f}), "
                  f"{'held' if check.get('holds') else 'did not hold'}."]
    lines.append("\nEvery candidate's drift recomputed from results.json's outputs: equal to recommend's.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
