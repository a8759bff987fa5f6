"""The re-run's outcome in the report (``checked.verdict``, ``report.headline``,
``report_check.check_section``): held, not held, or not known when measuring stopped."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from batchserve_planning.checked import MAX_RUNS, combine, verdict
from batchserve_planning.ramp import Step
from batchserve_planning.report import headline
from batchserve_planning.report_check import check_section

SLO = 20.0


def run(rows_per_s: float, p99_ms: float = 9.0) -> Step:
    return Step(concurrency=8, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=2.0, p99_ms=p99_ms, max_ms=30.0,
                error_rate=0.0, mean_batch_size=4.0, within_slo=p99_ms <= SLO, p99_high=p99_ms)


def figure(*values: float, p99_ms: float = 9.0) -> Step:
    return combine([run(v, p99_ms) for v in values], SLO)


def results(check: dict[str, Any], predicted: Step) -> dict[str, Any]:
    return {"predicted": asdict(predicted), "slo_p99_ms": SLO, "verification": check}


PICK = {"label": "batch 4, wait 0 ms, 1 worker x 1 inst"}


def test_a_miss_between_figures_known_to_3_percent_did_not_hold() -> None:
    predicted, reference = figure(1000, 1010), figure(1000, 1005)
    check = verdict(predicted, figure(800, 805), SLO, reference=reference)
    assert check["outcome"] == "not held" and not check["holds"]
    text = "\n".join(headline(results(check, predicted), PICK))
    assert text.startswith("## NOT CONFIRMED: the pick did not hold when started again")
    assert "not known" not in text
    assert "does NOT hold" in "\n".join(check_section(results(check, predicted), SLO))


def test_a_miss_where_a_figure_was_cut_by_the_budget_is_not_known() -> None:
    predicted = figure(1000, 1010)
    reference = figure(900, 1200)  # 2 runs, 1,050 +- 150: not known to 3%
    assert not reference.settled
    check = verdict(predicted, figure(880, 890), SLO, reference=reference)  # 0.84x the reference
    assert check["outcome"] == "not known" and not check["holds"]
    text = "\n".join(headline(results(check, predicted), PICK))
    assert text.startswith("## NOT CONFIRMED: the re-run's figures were not known when measuring stopped")
    assert "its final-round server's (2 runs: 900-1,200, mean not known to 3%) was not known to 3% " \
           "when the budget ended" in text
    assert "neither confirm the pick nor refute it" in text and "exits with status 3" in text
    section = "\n".join(check_section(results(check, predicted), SLO))
    assert "The re-run is NOT KNOWN" in section and "when the budget ended" in section
    # at the most runs, it says so instead of the budget
    capped = replace(reference, runs=MAX_RUNS)
    check = verdict(predicted, figure(880, 890), SLO, reference=capped)
    text = "\n".join(headline(results(check, predicted), PICK))
    assert f"when {MAX_RUNS} runs, the most, were measured" in text


def test_a_p99_over_the_slo_did_not_hold_however_loose_the_figures() -> None:
    predicted, reference = figure(1000, 1010), figure(900, 1200)
    check = verdict(predicted, figure(880, 890, p99_ms=40.0), SLO, reference=reference)
    assert check["outcome"] == "not held"
    assert "\n".join(headline(results(check, predicted), PICK)).startswith(
        "## NOT CONFIRMED: the pick did not hold when started again")


def test_a_rerun_within_10_percent_held_even_with_figures_not_known() -> None:
    predicted, reference = figure(1000, 1010), figure(900, 1200)
    check = verdict(predicted, figure(1000, 1020), SLO, reference=reference)
    assert check["outcome"] == "held" and check["holds"]


def test_a_miss_not_known_for_the_final_rounds_spread_says_so() -> None:
    # two pairs, each tight, inside the range the pick's server showed in the final round
    predicted = figure(18000, 23900, 19500, 22800, 20100, 23000, 18600, 21300)
    reference = combine([run(20990), run(21000)], SLO, [predicted])
    rerun = combine([run(17900), run(17970)], SLO, [predicted])
    check = verdict(predicted, rerun, SLO, reference=reference)
    assert check["outcome"] == "not known" and check["unknown_by_final_round"]
    text = "\n".join(headline(results(check, predicted), PICK))
    assert "(their runs taken together with the spread of the pick's final-round runs, " \
           "8 runs: 18,000-23,900, mean not known to 3%) when the budget ended" in text
    # judged by their own runs alone, the same pairs were known: not held, and no such words
    alone = verdict(predicted, figure(17900, 17970), SLO, reference=figure(20990, 21000))
    assert alone["outcome"] == "not held" and not alone["unknown_by_final_round"]
    assert "final-round runs" not in "\n".join(headline(results(alone, predicted), PICK))


def test_a_miss_not_known_says_what_would_settle_it() -> None:
    """Beside a CPU hog diabetes's re-run figures spread 8-16% a run, which no budget settles at 8
    runs a figure; the report advised "a larger --budget-s" all the same. It now says how many runs
    the spread measured takes, and the seconds more, or that a larger budget would not do."""
    predicted = combine([replace(run(v), seconds=10.0) for v in (1000, 1080)], SLO)

    def rerun_figure(*values: float) -> Step:
        return combine([replace(run(v), seconds=10.0) for v in values], SLO, [predicted])

    check = verdict(predicted, rerun_figure(840, 850, 845), SLO, reference=rerun_figure(930, 1070, 1000))
    assert check["outcome"] == "not known"
    text = "\n".join(headline(results(check, predicted), PICK))
    # pooled spread 6.5%: 5 runs a figure; 2 rounds more of two 10-s runs
    assert ("a figure takes about 5 runs to be known to 3% (3 were measured): about 40 s more "
            "--budget-s") in text
    loose = verdict(predicted, rerun_figure(840, 850, 845), SLO, reference=rerun_figure(800, 1200, 1000))
    assert loose["outcome"] == "not known"
    text = "\n".join(headline(results(loose, predicted), PICK))
    assert f"more than the {MAX_RUNS} it is measured at most: a larger --budget-s would not settle it" in text
    assert "about" in text and "s more --budget-s" not in text
