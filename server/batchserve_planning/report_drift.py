"""The report's accuracy section: each candidate's drift from torch float32, beside its speed and cost."""

from __future__ import annotations

from typing import Any

from batchserve_planning.formats import rate_text

MEASURES = {"top1_agreement": "top-1 agreement", "max_probability_shift": "largest probability shift",
            "min_cosine": "cosine (worst)", "mean_cosine": "cosine (mean)", "max_abs_error": "largest error"}


def accuracy_section(results: dict[str, Any]) -> list[str]:
    """Nothing without ``--runtimes``; else a table of every candidate's drift, throughput, cost and
    whether ``--max-drift`` left it out, and how the ONNX graphs were made."""
    accuracy = results.get("accuracy")
    if not accuracy:
        return []
    price = results.get("price_per_hour")
    candidates = results["candidates"]
    names = list(next((c["drift"] for c in candidates if c.get("drift")), {}))
    lines = ["## Accuracy: drift from torch float32", "",
             f"Each candidate's outputs on {accuracy['items']} of the sample inputs, fetched from its own "
             f"server, against the {accuracy['reference']} reference's (`batchserve/drift.py`, "
             f"{accuracy['measure']}); the outputs are in results.json."
             + (f" `--max-drift`: {', '.join(f'{k}={v:g}' for k, v in accuracy['limits'].items())}."
                if accuracy["limits"] else ""), "",
             "| # | candidate | " + " | ".join(MEASURES.get(n, n) for n in names)
             + " | inferences/s within SLO | " + ("per million | " if price else "") + "note |",
             "|---" * (4 + len(names) + (1 if price else 0)) + "|"]
    for index, outcome in enumerate(candidates):
        drift = outcome.get("drift") or {}
        best = outcome["best"]
        rate = best["rows_per_s"] if best else None
        cells = [f"{drift[n]:.4g}" if n in drift else "—" for n in names]
        cost = [f"{price / rate * 1e6:,.4g}" if rate else "—"] if price else []
        note = outcome.get("excluded") or outcome["error"] or ("" if best else "p99 over the SLO")
        lines.append(f"| {index + 1} | {outcome['label']} | " + " | ".join(cells)
                     + f" | {rate_text(rate) if rate else '—'} | " + "".join(f"{c} | " for c in cost)
                     + f"{note.splitlines()[0][:160] if note else ''} |")
    excluded = [o for o in candidates if o.get("excluded")]
    if excluded:
        lines += ["", f"{len(excluded)} candidate{'s' if len(excluded) > 1 else ''} left out by "
                  "`--max-drift` (not ramped; the others of the same device, precision and runtime "
                  "not started)."]
    for graph in results.get("runtimes") or []:
        lines.append("")
        lines.append(f"ONNX {graph['precision']}: `{graph['path']}`, "
                     + (f"written by batchserve export in {graph['seconds']:.0f} s (within the budget)"
                        if graph["source"] == "batchserve export" else "given by --onnx")
                     + ("; copy it into your model repository to serve it" if graph["source"] != "--onnx"
                        else "") + ".")
    return [*lines, ""]
