"""The report's re-run: "Checked by starting it again", and the words the headline uses for it.

The re-run is measured in turn with the pick's final-round server where that was kept (``finals``):
its ratio is to that server over the same minutes, and how far that server moved from its
final-round figure is the machine's drift. Where it was not kept, the ratio is to the prediction.
"""

from __future__ import annotations

import math
from typing import Any

from batchserve_planning.checked import MAX_RUNS, NOT_KNOWN, PRECISION, pooled_cv
from batchserve_planning.formats import X, rate_text
from batchserve_planning.load.results import format_ms

DRIFT_NOTED = 0.10
"""A drift of the machine's speed beyond this share is called out: figures move that much."""


def against(check: dict[str, Any]) -> str:
    """What the re-run's ratio is to."""
    if check.get("reference"):
        return "its final-round server, measured in turn with it"
    return "the prediction"


def drift_text(check: dict[str, Any]) -> str:
    """How far the machine's speed moved between the final round and the re-run, where measured."""
    drift = check.get("drift")
    if drift is None:
        return ""
    text = (f" Since the final round, the pick's own server moved to {drift:.2f}{X} its final-round "
            f"{rate_text(check['predicted_rows_per_s'])}/s: this machine's speed")
    if abs(drift - 1) > DRIFT_NOTED:
        return text + (f" moved by more than {DRIFT_NOTED:.0%}, so a figure measured here at another time "
                       "may be as far off.")
    return text + f" moved by {DRIFT_NOTED:.0%} or less."


def check_section(results: dict[str, Any], slo: float) -> list[str]:
    """The re-run's table and verdict (without the stage breakdown)."""
    check = results.get("verification") or {}
    lines = ["### Checked by starting it again", ""]
    if "error" in check or not check:
        return [*lines, f"The re-run failed: {check.get('error', 'not run')}", ""]
    verdict = "holds" if check.get("holds") else "is NOT KNOWN" if not_known(check) else "does NOT hold"
    reference = check.get("reference")
    head = "| | predicted (final round) |" + (" its final-round server, in turn with the re-run |"
                                              if reference else "") + " measured (re-run) |"
    rate = (f"| inferences/s at {check['concurrency']} clients | "
            f"{rate_text(check['predicted_rows_per_s'])} ({runs_text(results['predicted'])}) | ")
    p99 = f"| p99 | {format_ms(check['predicted_p99_ms'])} | "
    if reference:
        rate += f"{rate_text(reference['rows_per_s'])} ({check['drift']:.2f}{X}; {runs_text(reference)}) | "
        p99 += f"{format_ms(reference['p99_ms'])} | "
    rate += (f"{rate_text(check['measured_rows_per_s'])} ({check['ratio']:.2f}{X}; "
             f"{runs_text(check['step'])}) |")
    p99 += f"{format_ms(check['measured_p99_ms'])} |"
    how = ("The pick was started again and measured in turn with its final-round server, kept running, "
           "so that a change of this machine's speed falls on both alike. " if reference else "")
    return [
        *lines, head, "|---|---|" + ("---|" if reference else "") + "---|", rate, p99, "",
        f"{how}The re-run {verdict}: throughput within 10% of {against(check)}: "
        f"{'yes' if check['throughput_within_10pct'] else 'no'}; p99 within the SLO ({slo:g} ms): "
        f"{'yes' if check['p99_within_slo'] else 'no'}.{noise_verdict(check)}"
        + (f" {unknown_text(check, results['predicted'])}" if not_known(check) else "")
        + drift_text(check), ""]


def runs_text(step: dict[str, Any]) -> str:
    """A checked figure's runs and their range (``checked``)."""
    runs = step.get("runs", 1)
    if runs == 1 or step.get("rows_low") is None:
        return "1 run"
    text = f"{runs} runs: {rate_text(step['rows_low'])}-{rate_text(step['rows_high'])}"
    return text if step.get("settled", True) else text + ", mean not known to 3%"


def not_known(check: dict[str, Any]) -> bool:
    """Whether the re-run's outcome is not known (``checked.verdict``)."""
    return check.get("outcome") == NOT_KNOWN


def unknown_text(check: dict[str, Any], predicted: dict[str, Any]) -> str:
    """Why a re-run's outcome is not known: which figures compared were not known to 3%, and why
    measuring stopped (``checked.verdict``)."""
    compared = [("the re-run's figure", check["step"]),
                ("its final-round server's", check["reference"]) if check.get("reference")
                else ("the final round's", predicted)]
    unknown = [(name, step) for name, step in compared if not step.get("settled", True)]
    why = ("the budget ended" if all(step.get("runs", 1) < MAX_RUNS for _, step in unknown)
           else f"{MAX_RUNS} runs, the most, were measured")
    figures = " and ".join(f"{name} ({runs_text(step)})" for name, step in unknown)
    pooled = (f" (their runs taken together with the spread of the pick's final-round runs, "
              f"{runs_text(predicted)})" if check.get("unknown_by_final_round") else "")
    return (f"The throughput missed, but {figures} {'was' if len(unknown) == 1 else 'were'} not known "
            f"to {PRECISION:.0%}{pooled} when {why}: this run can neither confirm the pick nor refute it. "
            + what_would_settle(check, predicted))


def what_would_settle(check: dict[str, Any], predicted: dict[str, Any]) -> str:
    """What a re-run not known would have needed: the runs each figure compared takes to be known
    to ``PRECISION`` at the spread its runs measured (the re-run's pooled with the final round's, as
    ``finals`` measures them), and the seconds more that is, from the re-run's own rounds; or, past
    ``MAX_RUNS``, that a larger budget would not settle it. Beside a CPU hog on the 2-core VM
    diabetes's runs spread 8-16%: 10% takes 12 runs a figure, more than the most, where the report
    advised "a larger --budget-s"."""
    rerun, reference = check["step"], check.get("reference")
    final_round = (predicted.get("rows_cv"), predicted.get("runs", 1))
    spreads = [[(rerun.get("rows_cv"), rerun.get("runs", 1)), final_round]]
    spreads.append([(reference.get("rows_cv"), reference.get("runs", 1)), final_round] if reference
                   else [final_round])
    needed = 0
    for groups in spreads:
        cv = pooled_cv([(c, n) for c, n in groups if c is not None])
        if cv is None:
            return "Measure again with a larger --budget-s, or on a quieter machine."
        needed = max(needed, math.ceil((cv / PRECISION) ** 2))
    measured = rerun.get("runs", 1)
    needed = max(needed, measured + 1)
    if needed > MAX_RUNS:
        return (f"At the spread their runs measured, a figure takes about {needed} runs to be known to "
                f"{PRECISION:.0%}, more than the {MAX_RUNS} it is measured at most: a larger --budget-s "
                "would not settle it here; a quieter machine would.")
    round_s = sum(step.get("seconds", 0.0) / max(1, step.get("runs", 1))
                  for step in (rerun, reference) if step)
    more = f": about {(needed - measured) * round_s:,.0f} s more --budget-s" if round_s > 0 else ""
    return (f"At the spread their runs measured, a figure takes about {needed} runs to be known to "
            f"{PRECISION:.0%} ({measured} were measured){more}, or a quieter machine.")


def noise_verdict(check: dict[str, Any]) -> str:
    """Whether a re-run that missed is within the two figures' measured noise."""
    if check.get("holds") or "within_noise" not in check or check["throughput_within_10pct"] \
            or not_known(check):
        return ""
    if check["within_noise"]:
        return (" The two throughputs differ by no more than their measured noise (their runs' half "
                "ranges added): on this machine, at this time, the figure could not be pinned down closer.")
    return " The two throughputs differ by more than their measured noise (their runs' half ranges added)."
