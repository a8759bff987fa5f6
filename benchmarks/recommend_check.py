"""``recommend`` checked against itself, run after run: does the pick's re-run hold, do the picks
agree, is the budget honoured, with and without other work on the same cores.

For each model (MODELS) it runs ``batchserve recommend`` RUNS times without and RUNS times with a
background CPU load (LOAD: one process spinning on every core, outside recommend's process tree,
alternating: quiet, loaded, quiet, ...), and HARDWARE_RUNS times ``recommend --hardware
models/hardware.example.toml`` (quiet, then loaded, ...), each with the model's inputs, SLO and
target below, then reads results.json: the exit status (0 held, 3 the re-run did not hold or
was not known, 1 no pick), the pick, whether its re-run held (or was not known: its figures not
known to 3% when measuring stopped) (throughput within 10% of what recommend checked it
against: the pick's final-round server measured in turn with it, else the prediction; p99 within
the SLO), its ratio to the prediction and the drift (that server against its final-round
figure), the contention recommend measured, and the seconds against the budget. The predictions and checks
are recommend's own; this script only runs it and tabulates.

Usage: .venv/bin/python benchmarks/recommend_check.py
  MODELS=diabetes,resnet50,minilm  RUNS=5 (per condition)  HARDWARE_RUNS=2
  LOAD=1 (0: quiet only; loaded-first: loaded, quiet, loaded, ...; loaded: loaded only)
  BUDGET_S per model (default: diabetes 300, resnet50 900, minilm 600); CONFIG (models/models.toml)
  SLO_MS: the p99 SLO (default: diabetes 20, resnet50 2000, minilm 200), for a machine on which
  the default cannot be met at any load (all-MiniLM-L6-v2 beside the CPU hog on a slow day)
Prints a markdown table and writes benchmarks/results/recommend-check-<time>.json; the report
folders are kept under benchmarks/results/recommend-<model>-<time>/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]


def _sklearn_images(_: Path) -> str:
    import sklearn.datasets

    return str(Path(sklearn.datasets.__file__).parent / "images")


def _diabetes_rows(folder: Path) -> str:
    return str(harness.diabetes_rows(folder / "diabetes-rows.jsonl"))


def _texts(folder: Path) -> str:
    from embedding_texts import benchmark_texts

    path = folder / "texts.txt"
    path.write_text("".join(text + "\n" for text in benchmark_texts(200)))
    return str(path)


MODELS: dict[str, dict[str, Any]] = {
    "diabetes": {"slo": 20, "target": 20000, "budget": 300, "inputs": _diabetes_rows},
    "resnet50": {"slo": 2000, "target": 20, "budget": 900, "inputs": _sklearn_images},
    "minilm": {"slo": 200, "target": 500, "budget": 600, "inputs": _texts},
}


def run(model: str, results: Path, *, hardware: bool, loaded: bool) -> dict[str, Any]:
    spec = MODELS[model]
    kind = "hardware" if hardware else "plain"
    condition = "loaded" if loaded else "quiet"
    out = results / f"recommend-{model}-{kind}-{condition}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    budget = float(os.environ.get("BUDGET_S", spec["budget"]))
    inputs: Callable[[Path], str] = spec["inputs"]
    models = ROOT / "models"
    config = os.environ.get("CONFIG", str(models / "models.toml"))
    slo = os.environ.get("SLO_MS", str(spec["slo"]))
    command = [sys.executable, "-m", "batchserve", "recommend", "--config", config,
               "--model", model, "--inputs", inputs(out), "--slo-p99-ms", slo,
               "--budget-s", f"{budget:g}", "--no-progress", "--out", str(out)]
    if hardware:
        command += ["--target-rps", str(spec["target"]), "--hardware", str(models / "hardware.example.toml")]
    started = time.monotonic()
    with harness.background_load(loaded):
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - started
    (out / "stderr.log").write_text(done.stderr)
    if done.returncode not in (0, 1, 3):
        raise SystemExit(f"{model}: recommend exited {done.returncode}: {done.stderr[-2000:]}")
    data = json.loads((out / "results.json").read_text())
    row = {"model": model, "kind": kind, "loaded": loaded, "exit": done.returncode, "seconds": seconds,
           "budget_s": budget, "out": str(out), "contention": data.get("contention")}
    if hardware:
        rerun = data["checks"].get("rerun") or {}
        entry = next((e for e in data["profiles"] if e["profile"]["name"] == data["pick_profile"]), None)
        row.update(pick=(f"{entry['sizing']['replicas']} x {data['pick_profile']}: "
                         f"{entry['candidates'][entry['pick']]['label']}") if entry else None,
                   holds=rerun.get("holds"), ratio=rerun.get("ratio"), p99_ms=rerun.get("p99_ms"))
    else:
        check = data.get("verification") or {}
        pick = data["candidates"][data["pick"]]["label"] if data["pick"] is not None else None
        row.update(pick=pick, holds=check.get("holds"), outcome=check.get("outcome"),
                   ratio=check.get("ratio"),
                   to_prediction=check.get("ratio_to_prediction"), drift=check.get("drift"),
                   p99_ms=check.get("measured_p99_ms"), decisions=data.get("decisions"))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | run | background load | exit | pick | re-run / checked against | "
             "re-run / prediction | drift | re-run p99 | holds | others' CPU (mean, max) | contended | "
             "seconds (budget) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        contention = row["contention"] or {}
        share = (f"{contention['mean_others_cpu']:.0%}, {contention['max_others_cpu']:.0%}"
                 if contention.get("measurements") else "—")
        ratio, to_prediction, drift = (f"{row[k]:.2f}x" if row.get(k) is not None else "—"
                                       for k in ("ratio", "to_prediction", "drift"))
        p99 = f"{row['p99_ms']:,.1f} ms" if row.get("p99_ms") is not None else "—"
        lines.append(f"| {row['model']} | {row['kind']} | {'yes' if row['loaded'] else 'no'} | "
                     f"{row['exit']} | {row['pick']} | {ratio} | {to_prediction} | {drift} | {p99} | "
                     f"{'yes' if row['holds'] else row.get('outcome') or 'no'} | "
                     f"{share} | "
                     f"{len(contention.get('contended', []))} of {contention.get('measurements', 0)} | "
                     f"{row['seconds']:.0f} ({row['budget_s']:.0f}) |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in ("plain", "hardware"):
            mine = [r for r in rows if r["model"] == model and r["kind"] == kind]
            if mine:
                picks = sorted({str(r["pick"]) for r in mine})
                held = sum(bool(r["holds"]) for r in mine)
                unknown = sum(r.get("outcome") == "not known" for r in mine)
                lines.append(f"- {model} ({kind}): held in {held} of {len(mine)} runs"
                             + (f" (not known in {unknown}: measuring stopped first)" if unknown else "")
                             + "; "
                             f"{len(picks)} distinct pick(s): {'; '.join(picks)}")
    return "\n".join(lines)


def main() -> None:
    models = os.environ.get("MODELS", "diabetes,resnet50,minilm").split(",")
    runs, hardware_runs = int(os.environ.get("RUNS", "5")), int(os.environ.get("HARDWARE_RUNS", "2"))
    loads = {"1": [False, True], "0": [False], "loaded-first": [True, False],
             "loaded": [True]}[os.environ.get("LOAD", "1")]
    results = ROOT / "benchmarks" / "results"
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for model in models:
        for _ in range(runs):  # alternating: quiet, loaded, quiet, ... (or loaded first)
            for loaded in loads:
                rows.append(run(model, results, hardware=False, loaded=loaded))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        for index in range(hardware_runs):
            rows.append(run(model, results, hardware=True, loaded=loads[index % len(loads)]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\ncommit {commit}, started {started}\n")
    print(table(rows))
    print()
    print(summary(rows))
    harness.save_results("recommend-check", {"commit": commit, "started": started, "runs": rows})


if __name__ == "__main__":
    main()
