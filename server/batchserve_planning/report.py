"""The report of ``batchserve recommend``: report.md, frontier.png, results.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchserve_planning.candidates import Candidate
from batchserve_planning.formats import X, batch_text, mib_text, rate_text
from batchserve_planning.load.results import format_ms
from batchserve_planning.report_check import (
    against,
    check_section,
    drift_text,
    noise_verdict,
    not_known,
    runs_text,
    unknown_text,
)
from batchserve_planning.serverproc import toml_table
from batchserve_planning.stages import breakdown_section, stages_of
from batchserve_planning.tradeoff import tradeoff


def write(out: Path, results: dict[str, Any]) -> str:
    return write_folder(out, results, render, {"frontier.png": plot_frontier})


def write_folder(out: Path, results: dict[str, Any], render: Callable[[dict[str, Any]], str],
                 charts: dict[str, Callable[[Path, dict[str, Any]], None]]) -> str:
    """results.json, each chart by its file name, and report.md (returned) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, plot in charts.items():
        plot(out / name, results)
    markdown = render(results)
    (out / "report.md").write_text(markdown)
    return markdown


def render(results: dict[str, Any]) -> str:
    from batchserve_planning.loadtest import machine
    from batchserve_planning.report_drift import accuracy_section

    candidates = results["candidates"]
    pick = None if results["pick"] is None else candidates[results["pick"]]
    slo = results["slo_p99_ms"]
    lines = [
        f"# batchserve recommend: `{results['model']}`"
        + (f", version `{results['version']}`" if results.get("version") else ""), "",
        f"{results['date']}; {machine()}. SLO: p99 ≤ {slo:g} ms. Inputs: `{results['inputs']}`. "
        f"{len(candidates)} candidates measured in {results['elapsed_s']:.0f} s "
        f"(budget {results['budget_s']:.0f} s)"
        + (f"; not run for lack of budget: {', '.join(results['skipped'])}" if results["skipped"] else "")
        + ".", "",
    ]
    if pick is None:
        lines += no_pick_section(results)
    else:
        lines += _recommendation(results, pick)
    lines += _noise(results)
    lines += _size(results.get("model_size") or {})
    lines += memory_by_input_section(results.get("memory_by_input"))
    lines += _candidates_table(candidates, results["pick"])
    lines += accuracy_section(results)
    lines += ["![throughput against p99 per candidate](frontier.png)", ""]
    lines += _steps_table(candidates)
    return "\n".join(lines)


def _memory(outcome: dict[str, Any]) -> str:
    """The server's peak memory, and what it covers."""
    text = mib_text(outcome["peak_rss_bytes"])
    processes = outcome.get("processes") or 1
    if processes > 1:
        text += (f" ({processes} processes: the supervisor and its workers, each one's peak, summed: "
                 "an upper bound)")
    return text


def _count(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural where ``count`` is not 1 ("1 client", "4 concurrent clients")."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def headline(results: dict[str, Any], pick: dict[str, Any]) -> list[str]:
    """The report's first words: the checked figure (the re-run's, where it held), or, where the
    re-run did not hold, that, with what did hold."""
    predicted = results["predicted"] or pick["best"]
    slo = results["slo_p99_ms"]
    check = results.get("verification") or {}
    step = check.get("step")
    if check.get("holds") and step:
        return [f"**{pick['label']}**: {rate_text(step['rows_per_s'])} inferences/s at p99 "
                f"{format_ms(step['p99_ms'])} (p50 {format_ms(step['p50_ms'])}) with "
                f"{_count(step['concurrency'], 'concurrent client')}, mean batch "
                f"{batch_text(step['mean_batch_size'])}, server peak memory "
                f"{_memory(pick)}"
                + (f", GPU memory {mib_text(pick['gpu_bytes'])}" if pick["gpu_bytes"] else "")
                + (f": checked, started again it measured {check['ratio']:.2f}{X} {against(check)}"
                   if check.get("reference") else f": checked, started again it measured "
                   f"{check['ratio']:.2f}{X} the final round's {rate_text(check['predicted_rows_per_s'])}/s")
                + f", p99 within the SLO of {slo:g} ms.{drift_text(check)}", ""]
    unknown = not_known(check)
    lines = ["## NOT CONFIRMED: " + ("the re-run's figures were not known when measuring stopped" if unknown
                                     else "the pick did not hold when started again"), ""]
    if not step:
        lines += [f"**{pick['label']}** was predicted at {rate_text(predicted['rows_per_s'])} inferences/s "
                  f"at p99 {format_ms(predicted['p99_ms'])}, but its re-run did not complete "
                  f"({check.get('error', 'not run')}): **no figure was checked**.", ""]
        return lines
    misses = ([] if check["throughput_within_10pct"] else
              [f"throughput {check['ratio']:.2f}{X} {against(check)} (more than 10% off)"]) + (
              [] if check["p99_within_slo"] else
              [f"p99 {format_ms(check['measured_p99_ms'])} over the SLO of {slo:g} ms"])
    held = (f"**What held: {rate_text(step['rows_per_s'])} inferences/s at p99 {format_ms(step['p99_ms'])}** "
            f"with {_count(step['concurrency'], 'client')} (the re-run's own figure, within the SLO)."
            if check["p99_within_slo"] else
            "**Nothing held**: no figure of this run is confirmed within the SLO; measure again on a "
            "quieter machine, with fewer clients, or with a looser SLO.")
    lines += [f"**{pick['label']}** was predicted at {rate_text(predicted['rows_per_s'])} inferences/s "
              "at p99 "
              f"{format_ms(predicted['p99_ms'])} ({_count(predicted['concurrency'], 'client')}); "
              "started again it "
              f"measured {rate_text(check['measured_rows_per_s'])}/s at p99 "
              f"{format_ms(check['measured_p99_ms'])}: "
              + "; ".join(misses) + ". "
              + (unknown_text(check, predicted) + " " if unknown else "") + held + noise_verdict(check)
              + drift_text(check), "",
              "`batchserve recommend` exits with status 3 for this.", ""]
    return lines


def _recommendation(results: dict[str, Any], pick: dict[str, Any]) -> list[str]:
    best = results["predicted"] or pick["best"]
    slo = results["slo_p99_ms"]
    candidate = Candidate(**pick["candidate"])
    table = candidate.table(results["model_table"])
    workers = candidate.workers
    lines = [
        *headline(results, pick), "## Recommendation", "",
        f"{'Predicted by the final round' if results['final_round'] else 'Measured'}: **{pick['label']}**, "
        f"{rate_text(best['rows_per_s'])} inferences/s ({_spread(best)}) at p99 {format_ms(best['p99_ms'])} "
        f"(p50 {format_ms(best['p50_ms'])}) with "
        f"{_count(best['concurrency'], 'concurrent client')}, mean batch "
        f"{batch_text(best['mean_batch_size'])}, server peak memory {_memory(pick)}"
        + (f", GPU memory {mib_text(pick['gpu_bytes'])}" if pick["gpu_bytes"] else "") + ".", "",
        *bullets(results.get("decisions")),
        f"Serve it with **{workers} worker{'s' if workers > 1 else ''}**: `batchserve serve --workers "
        f"{workers}` (or `BATCHSERVE_WORKERS={workers}`), measured on "
        f"{results['settings'].get('server_cores', '?')} cores; each worker holds its own copy of the "
        "model, and this `[[models]]` table:", "",
        "```toml", toml_table(table).rstrip(), "```", "",
    ]
    lines += final_round_section(results)
    check = results.get("verification") or {}
    lines += check_section(results, slo)
    if check and "error" not in check:
        lines += breakdown_section(stages_of(check), "the re-run of the pick")
    price = results.get("price_per_hour")
    if price:
        checked = check.get("step") if check.get("p99_within_slo") else None
        per_hour = (checked or best)["rows_per_s"] * 3600
        lines += ["## Cost", "",
                  f"At {price:g} per hour for this machine, the pick serves {per_hour:,.0f} inferences per "
                  f"hour ({'as the re-run measured' if checked else 'as predicted: not confirmed'}): "
                  f"**{price / per_hour * 1e6:,.4g} per million inferences**, {price:g} per hour, "
                  "with the machine kept at the recommended load.", ""]
        for other in results["candidates"]:
            if other["candidate"]["max_batch_size"] == 1 and other["best"] and other is not pick:
                rate = other["best"]["rows_per_s"] * 3600
                lines += [f"Without batching ({other['label']}): {price / rate * 1e6:,.4g} per million.", ""]
                break
    lines += ["## Trade-off", "", *tradeoff(results, pick), ""]
    return lines


def no_pick_section(results: dict[str, Any]) -> list[str]:
    """Why there is no pick: nothing met the SLO in the sweep, or the final round measured what did
    over it again (``choices.unrefuted``), with its figures and the decisions that say which."""
    slo = results["slo_p99_ms"]
    if not results["final_round"]:
        why = [f"No candidate kept p99 within {slo:g} ms, even at one client. The tables below show "
               "what each reached; a looser SLO, a faster device or a smaller model is needed.", ""]
    else:
        why = [f"No candidate held p99 within {slo:g} ms: the final round measured its finalists over "
               "it at the fewest clients their ramps had met it at, so the sweep's figures within it "
               "did not hold up. The tables below show what each reached; a looser SLO, a quieter "
               "machine, a faster device or a smaller model is needed.", "",
               *bullets(results.get("decisions")), *final_round_section(results)]
    return ["## No recommendation", "", *why]


def bullets(notes: list[str] | None) -> list[str]:
    """``notes`` as a markdown list and the blank line after it; nothing where there are none."""
    return [*(f"- {note}" for note in notes), ""] if notes else []


def final_round_section(results: dict[str, Any]) -> list[str]:
    """The final round's figures beside the sweep's; one measured again at a lower load shows
    the figure over the SLO it replaced."""
    if not results["final_round"]:
        return []
    lines = ["### Final round", "",
             "The best of a sweep is the luckiest of many short measurements, so the two best "
             "candidates were measured again on fresh servers started together, at their best load, "
             "in turn (one run of each a round, three steps long, the order reversed every round, so "
             "that a change of this machine's speed falls on each alike) until the mean of each one's "
             "runs was known to within 3% (standard error; two runs at least, eight at most, or as "
             "many as the budget left time for); one over the SLO there was measured again at the most "
             "clients below that its ramp met the SLO at. The better one within the SLO is the pick, and its "
             "figures are the prediction.",
             "",
             "| candidate | clients | sweep inferences/s | final round inferences/s (runs) | p99 |",
             "|---|---|---|---|---|"]
    for final in results["final_round"]:
        outcome, step = results["candidates"][final["candidate"]], final["step"]
        first = final.get("over_slo")
        clients = (f"{step['concurrency']} (at {first['concurrency']}: p99 {format_ms(first['p99_ms'])}, "
                   f"highest {format_ms(first.get('p99_high') or first['p99_ms'])}: over the SLO)"
                   if first else str(step["concurrency"]))
        lines.append(f"| #{final['candidate'] + 1} {outcome['label']} | {clients} | "
                     f"{rate_text(outcome['best']['rows_per_s'])} | {rate_text(step['rows_per_s'])} "
                     f"({runs_text(step)}) | "
                     f"{format_ms(step['p99_ms'])}{'' if step['within_slo'] else ' (over the SLO)'} |")
    lines.append("")
    return lines


def _spread(step: dict[str, Any]) -> str:
    """A step's throughput range over its windows (or runs), and whether they agreed."""
    if step.get("rows_low") is None:
        return "one window"
    if step.get("runs", 1) > 1:
        return runs_text(step)
    text = f"{rate_text(step['rows_low'])}-{rate_text(step['rows_high'])} over {step['windows']} windows"
    return text if step.get("settled", True) else text + ", which did not agree"


def _noise(results: dict[str, Any]) -> list[str]:
    """How sure the figures are: the stability rule, the unsettled steps, the machine's contention."""
    rule = results.get("stability")
    contention = results.get("contention") or {}
    if not rule:
        return []
    steps = [s for o in results["candidates"] for s in o["steps"]]
    unsettled = [s for s in steps if not s.get("settled", True)]
    lines = ["## How sure", "",
             f"Every figure is measured in windows until {rule['windows']} in a row agree within "
             f"{rule['tolerance']:.0%} (at most {rule['max_windows']} windows); it is their mean, with their "
             "range, and within the SLO only if the highest p99 of them is. Candidates within each other's "
             "range are equivalent, and the simpler one is picked. "
             f"{len(unsettled)} of {len(steps)} ramp steps did not settle within the cap.", ""]
    if contention.get("measurements"):
        contended = contention["contended"]
        lines.append(
            f"Other work on this machine took up to {contention['max_others_cpu']:.0%} of its CPUs "
            f"(mean {contention['mean_others_cpu']:.0%}) and steal up to {contention['max_steal']:.0%} "
            f"while measuring.")
        if contended:
            lines += ["", f"**{len(contended)} of {contention['measurements']} measurements ran on a "
                      f"contended machine (other processes over {contention['busy_share']:.0%} of the "
                      f"CPUs, or steal over {contention['steal_share']:.0%}): their figures are "
                      "unreliable, likely low.** Affected: " + "; ".join(contended[:20])
                      + (f"; and {len(contended) - 20} more" if len(contended) > 20 else "") + "."]
        else:
            lines.append("No measurement was contended: the figures are this machine's own.")
        lines.append("")
    return lines


def _size(size: dict[str, Any]) -> list[str]:
    if not size or "error" in size:
        return ["## Model size", "", f"Not measured: {size.get('error', 'unknown')}", ""]
    lines = ["## Model size", ""]
    if size.get("kind") == "torch":
        lines.append(f"{size['parameters']:,} parameters; weights: " + ", ".join(
            f"{dtype} {mib_text(n)}" for dtype, n in size["weight_bytes"].items()) + ".")
    elif size.get("kind") == "estimator":
        lines.append(f"{size['estimator']} with {size['parameters']:,} fitted values; "
                     f"pickled {size['pickled_bytes']:,} bytes.")
    lines += [f"Artifact on disk: {size.get('artifact_bytes') or 0:,} bytes. "
              "Activation memory per batch size: `batchserve inspect`.", ""]
    return lines


def memory_by_input_section(table: dict[str, Any] | None) -> list[str]:
    """Peak memory by input size and batch size, as ``inspect`` measured it (none for row models)."""
    if not table:
        return []
    from batchserve_planning.input_memory import memory_by_input_caption, memory_by_input_lines

    return ["## Memory by input size", "", *memory_by_input_caption(table), "",
            *memory_by_input_lines(table), ""]


def _candidates_table(candidates: list[dict[str, Any]], pick: int | None) -> list[str]:
    lines = ["## All candidates", "",
             "| # | candidate | inferences/s within SLO | p50 | p99 | clients | mean batch | "
             "server peak RSS | time | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for index, outcome in enumerate(candidates):
        best = outcome["best"]
        mark = " **(pick)**" if index == pick else ""
        if best is None:
            note = outcome.get("excluded") or outcome["error"] or _missed(outcome.get("steps") or [])
            lines.append(f"| {index + 1} | {outcome['label']}{mark} | — | — | — | — | — | "
                         f"{mib_text(outcome['peak_rss_bytes'])} | {outcome['seconds']:.0f} s | "
                         f"{note.splitlines()[0][:80]} |")
            continue
        lines.append(f"| {index + 1} | {outcome['label']}{mark} | {rate_text(best['rows_per_s'])} | "
                     f"{format_ms(best['p50_ms'])} | {format_ms(best['p99_ms'])} | {best['concurrency']} | "
                     f"{batch_text(best['mean_batch_size'])} | {mib_text(outcome['peak_rss_bytes'])} | "
                     f"{outcome['seconds']:.0f} s | |")
    if any((o.get("processes") or 1) > 1 for o in candidates):
        lines += ["", "Server peak RSS with more than one worker: the supervisor's and each worker's peak "
                  "resident set, summed (they need not peak at once: an upper bound, the safe side for "
                  "a memory limit). Every worker holds its own copy of the model."]
    return [*lines, ""]


def _missed(steps: list[dict[str, Any]]) -> str:
    """A candidate that met the SLO at no load: the lowest p99 its steps measured, and where."""
    low = min(steps, key=lambda step: step["p99_ms"], default=None)
    where = f" (lowest {format_ms(low['p99_ms'])}, at {low['concurrency']})" if low else ""
    return f"p99 over the SLO even at 1 client{where}"


def _steps_table(candidates: list[dict[str, Any]]) -> list[str]:
    lines = ["## Every ramp step", "",
             "Inferences/s: the mean of the agreeing windows, their range and how many were measured "
             "(* did not agree); p99: the windows' median and highest; others: what other processes "
             "took of the machine's CPUs meanwhile.", "",
             "| # | clients | inferences/s | range (windows) | p50 | p99 (highest) | max | others | "
             "non-2xx | mean batch | within SLO |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for index, outcome in enumerate(candidates):
        for step in outcome["steps"]:
            lines.append(f"| {index + 1} | {step['concurrency']} | {rate_text(step['rows_per_s'])} | "
                         f"{_range(step)} | {format_ms(step['p50_ms'])} | {format_ms(step['p99_ms'])} "
                         f"({format_ms(step.get('p99_high') or step['p99_ms'])}) | "
                         f"{format_ms(step['max_ms'])} | "
                         f"{_share(step.get('others_cpu'))} | {step_tail(step)} |")
    return [*lines, ""]


def _range(step: dict[str, Any]) -> str:
    if step.get("rows_low") is None:
        return "—"
    mark = "" if step.get("settled", True) else "*"
    return f"{rate_text(step['rows_low'])}-{rate_text(step['rows_high'])} ({step['windows']}{mark})"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def step_tail(step: dict[str, Any]) -> str:
    """A step's last cells in a table: non-2xx share, mean batch, within the SLO."""
    batch = "—" if step["mean_batch_size"] is None else f"{step['mean_batch_size']:.1f}"
    return f"{step['error_rate']:.2%} | {batch} | {'yes' if step['within_slo'] else 'no'}"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(path: Path, results: dict[str, Any]) -> None:
    """Throughput against p99 for every step of every candidate; the SLO and the pick marked."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(10, 6), dpi=110)
    for index, outcome in enumerate(results["candidates"]):
        steps = outcome["steps"]
        if steps:
            axes.plot([s["rows_per_s"] for s in steps], [s["p99_ms"] for s in steps], marker="o",
                      markersize=3, linewidth=1, label=f"#{index + 1} {outcome['label']}")
    axes.axhline(results["slo_p99_ms"], color="red", linestyle="--", linewidth=1,
                 label=f"SLO p99 {results['slo_p99_ms']:g} ms")
    if results["pick"] is not None:
        best = results["predicted"] or results["candidates"][results["pick"]]["best"]
        axes.plot([best["rows_per_s"]], [best["p99_ms"]], marker="*", markersize=18, color="gold",
                  markeredgecolor="black", linestyle="none",
                  label=f"recommended: #{results['pick'] + 1} (its final-round measurement)")
    axes.set_yscale("log")
    axes.set_xlabel("throughput (inferences/s)")
    axes.set_ylabel("p99 latency (ms, log scale)")
    axes.set_title(f"{results['model']}: throughput vs p99 per candidate (each point: one ramp step)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
