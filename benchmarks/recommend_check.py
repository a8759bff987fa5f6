"""``recommend --hardware`` checked against itself: predicted vs measured for the pick and for two
replicas, per model, from one run of the real command.

For each model it runs ``batchserve recommend --hardware models/hardware.example.toml`` with the
model's inputs, SLO and target (below), then reads results.json: the pick's re-run (one replica's
share of the target, open loop: answered vs arrived, p99 vs the SLO) and the two-replica check
(two replicas of a profile behind nginx, their open-loop peak against twice one replica's). The
prediction is recommend's own; this script only runs it and tabulates.

Usage: .venv/bin/python benchmarks/recommend_check.py   (needs nginx for the replica check;
MODELS=diabetes,resnet50 (also minilm); BUDGET_S per model, default 300 for diabetes, 900 for
resnet50, 600 for minilm)
Prints a markdown table and writes benchmarks/results/recommend-check-<time>.json; the report
folders are kept under benchmarks/results/recommend-<model>-<time>/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]


def _sklearn_images() -> str:
    import sklearn.datasets

    return str(Path(sklearn.datasets.__file__).parent / "images")


def _diabetes_rows(folder: Path) -> str:
    from sklearn.datasets import load_diabetes

    path = folder / "diabetes-rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in load_diabetes().data[:200].tolist()))
    return str(path)


def _texts(folder: Path) -> str:
    from embedding_texts import benchmark_texts

    path = folder / "texts.txt"
    path.write_text("".join(text + "\n" for text in benchmark_texts(200)))
    return str(path)


RUNS: dict[str, dict[str, Any]] = {
    "diabetes": {"slo": 20, "target": 20000, "budget": 300, "inputs": _diabetes_rows},
    "resnet50": {"slo": 2000, "target": 20, "budget": 900, "inputs": lambda _: _sklearn_images()},
    "minilm": {"slo": 200, "target": 500, "budget": 600, "inputs": _texts},
}


def run(model: str, results: Path) -> dict[str, Any]:
    spec = RUNS[model]
    out = results / f"recommend-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    budget = float(os.environ.get("BUDGET_S", spec["budget"]))
    models = ROOT / "models"
    command = [sys.executable, "-m", "batchserve", "recommend", "--config", str(models / "models.toml"),
               "--model", model, "--inputs", spec["inputs"](out), "--slo-p99-ms", str(spec["slo"]),
               "--target-rps", str(spec["target"]), "--hardware", str(models / "hardware.example.toml"),
               "--budget-s", f"{budget:g}", "--no-progress", "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    (out / "stderr.log").write_text(done.stderr)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{model}: recommend exited {done.returncode}: {done.stderr[-2000:]}")
    data = json.loads((out / "results.json").read_text())
    entry = next((e for e in data["profiles"] if e["profile"]["name"] == data["pick_profile"]), None)
    return {"model": model, "out": str(out), "seconds": time.monotonic() - started, "slo_ms": spec["slo"],
            "target_rps": spec["target"], "pick": data["pick_profile"],
            "replicas": entry["sizing"]["replicas"] if entry else None,
            "peak_rps": entry["sizing"]["peak_rps"] if entry else None,
            "rerun": data["checks"].get("rerun"), "replica_check": data["checks"].get("replicas"),
            "closest": data["closest"]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | pick | one replica's peak (req/s) | re-run: answered / arrived | re-run p99 vs SLO | "
             "2 replicas: predicted | measured | ratio |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rerun, check = row["rerun"] or {}, row["replica_check"] or {}
        if row["pick"] is None:
            lines.append(f"| {row['model']} | none ({row['closest']}) | | | | | | |")
            continue
        rerun_cells = (f"{rerun['carried_rps']:,.1f} / {rerun['arrived_rps']:,.1f} ({rerun['ratio']:.2f}x) | "
                       f"{rerun['p99_ms']:,.1f} vs {row['slo_ms']} ms" if "ratio" in rerun else
                       f"{rerun.get('error', 'not run')} |")
        check_cells = (f"{check['predicted_rps']:,.1f} | {check['measured_rps']:,.1f} | {check['ratio']:.2f}x"
                       if check.get("ratio") is not None else
                       f"{check.get('skipped') or check.get('error') or 'no rate within the SLO'} | | ")
        lines.append(f"| {row['model']} | {row['replicas']} x {row['pick']} | {row['peak_rps']:,.1f} | "
                     f"{rerun_cells} | {check_cells} |")
    return "\n".join(lines)


def main() -> None:
    models = os.environ.get("MODELS", "diabetes,resnet50").split(",")
    results = ROOT / "benchmarks" / "results"
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [run(model, results) for model in models]
    print(f"commit {commit}, started {started}\n")
    print(table(rows))
    harness.save_results("recommend-check", {"commit": commit, "started": started, "runs": rows})


if __name__ == "__main__":
    main()
