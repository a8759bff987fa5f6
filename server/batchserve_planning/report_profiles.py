"""The report of ``recommend --hardware``: report.md, profiles.png, results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchserve_planning.candidates import Candidate
from batchserve_planning.capacity import GIB, MEMORY_HEADROOM
from batchserve_planning.formats import X, mib_text, rate_text
from batchserve_planning.load.results import format_ms
from batchserve_planning.report import (
    _candidates_table,
    _noise,
    _size,
    bullets,
    memory_by_input_section,
    pyplot,
    step_tail,
    write_folder,
)
from batchserve_planning.serverproc import toml_table
from batchserve_planning.tradeoff import tradeoff


def write(out: Path, results: dict[str, Any]) -> str:
    return write_folder(out, results, render, {"profiles.png": plot_profiles})


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4g}"


def _load_words(load: dict[str, Any]) -> str:
    parts = []
    if load["target_rps"]:
        parts.append(f"{load['target_rps']:g} requests/s arriving (Poisson)")
    if load["concurrency"]:
        parts.append(f"{load['concurrency']} concurrent clients")
    text = " and ".join(parts) or "no target given (each profile sized at one replica's peak)"
    rows = load["rows_per_request"]
    return text + f", {rows} inference{'s' if rows > 1 else ''} per request"


def render(results: dict[str, Any]) -> str:
    from batchserve_planning.loadtest import machine

    slo = results["slo_p99_ms"]
    entries = results["profiles"]
    lines = [
        f"# batchserve recommend: `{results['model']}` on {len(entries)} hardware profiles", "",
        f"{results['date']}; measured on {machine()}. SLO: p99 ≤ {slo:g} ms. Load: "
        f"{_load_words(results['load'])}. Inputs: `{results['inputs']}`. Hardware: "
        f"`{results['hardware']}`. {results['elapsed_s']:.0f} s (budget {results['budget_s']:.0f} s).", "",
        "## Which machine", "",
    ]
    chosen = next((e for e in entries if e["profile"]["name"] == results["pick_profile"]), None)
    if chosen is None:
        lines += [f"**No profile carries this load within the SLO.** {results['closest']}.", ""]
    else:
        lines = lines[:-2] + _not_confirmed(results) + lines[-2:] + _pick_lines(results, chosen)
    lines += _profiles_table(entries, results["pick_profile"])
    lines += ["![$ per 1M inferences and p99 by profile](profiles.png)", ""]
    if results["losers"]:
        lines += ["### Why the others lost", ""]
        lines += [f"- **{name}**: {why}." for name, why in results["losers"].items()] + [""]
    lines += _sizing_words(results)
    lines += _noise({"stability": results.get("stability"), "contention": results.get("contention"),
                     "candidates": [c for e in entries for c in (e.get("candidates") or [])]})
    if chosen is not None:
        lines += _checks(results)
        profile_results = {"slo_p99_ms": slo, "candidates": chosen["candidates"]}
        lines += ["## Trade-off (on the pick's profile)", "",
                  *tradeoff(profile_results, chosen["candidates"][chosen["pick"]]), ""]
    lines += memory_by_input_section(results.get("memory_by_input"))
    lines += _size(results.get("model_size") or {})
    for entry in entries:
        if entry.get("candidates") is not None:
            lines += [f"## Profile {entry['profile']['name']}: every candidate", "",
                      f"{entry['placement']['how']}.", ""]
            lines += _candidates_table(entry["candidates"], entry["pick"])[2:]
            lines += _open_loop_table(entry)
    return "\n".join(lines)


def _pick_lines(results: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    sizing = chosen["sizing"]
    profile = chosen["profile"]
    outcome = chosen["candidates"][chosen["pick"]]
    table = Candidate(**outcome["candidate"]).table(results["model_table"])
    example = " (an example price: replace it with yours)" if profile["price_is_example"] else \
        f" (price: {profile['price_source']})"
    return [
        f"**{sizing['replicas']} x {profile['name']}** ({profile['described']}, "
        f"${profile['price_per_hour']:g}/h{example}), each serving `{outcome['label']}`: "
        f"**{_money(sizing['dollars_per_hour'])}/hour, {_money(sizing['dollars_per_million'])} per 1M "
        f"inferences** at {sizing['served_rps']:,.1f} requests/s. One replica's open-loop peak within the "
        f"SLO: {sizing['peak_rps']:,.1f} requests/s; each is given {sizing['per_replica_rps']:,.1f} "
        f"({_headroom_words(results, chosen)}). Peak memory per replica "
        f"{mib_text(sizing['peak_rss_bytes'])}: a {_gib(sizing['memory_size_bytes'])} machine fits it.", "",
        *bullets(chosen.get("decisions")),
        "Each replica's `[[models]]` table (serve it with `batchserve serve --workers "
        f"{outcome['candidate']['workers']}`):", "",
        "```toml", toml_table(table).rstrip(), "```", ""]


def _headroom_words(results: dict[str, Any], entry: dict[str, Any]) -> str:
    """The headroom a replica was sized with, and where it came from."""
    given = results["load"]["headroom"]
    variance = entry.get("variance") or {}
    used = variance.get("headroom", given)
    if variance.get("service_cv") is None or used == given:
        return f"{used:.0%} headroom"
    return (f"{used:.1%} headroom: {given:.0%} x (1 + cv²) for a service time that varies, cv "
            f"{variance['service_cv']:.2f} measured at one client")


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GIB:g} GiB"


def _profiles_table(entries: list[dict[str, Any]], chosen: str | None) -> list[str]:
    lines = ["| profile | measured | best configuration | closed loop inferences/s | open-loop peak "
             "requests/s | replicas | $/hour | $ per 1M | peak memory | memory size |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in entries:
        profile = entry["profile"]
        name = f"**{profile['name']}** (pick)" if profile["name"] == chosen else profile["name"]
        if entry["refused"]:
            lines.append(f"| {name} | refused: {entry['refused']} | | | | | | | | |")
            continue
        how = "isolated" if entry["placement"]["isolated"] else "generator sharing its CPUs"
        outcome = entry["candidates"][entry["pick"]] if entry["pick"] is not None else None
        label = outcome["label"] if outcome else "none within the SLO"
        predicted = rate_text(entry["predicted"]["rows_per_s"]) if entry["predicted"] else "—"
        sizing = entry.get("sizing")
        if sizing is None:
            lines.append(f"| {name} | {how} | {label} | {predicted} | — | | | | | |")
            continue
        lines.append(f"| {name} | {how} | {label} | {predicted} | {sizing['peak_rps']:,.1f} | "
                     f"{sizing['replicas']} | {_money(sizing['dollars_per_hour'])} | "
                     f"{_money(sizing['dollars_per_million'])} | {mib_text(sizing['peak_rss_bytes'])} | "
                     f"{_gib(sizing['memory_size_bytes'])} |")
    return [*lines, ""]


def _sizing_words(results: dict[str, Any]) -> list[str]:
    load = results["load"]
    return [
        "### How the sizing is computed", "",
        f"- A replica is given its open-loop peak less {load['headroom']:.0%}: the peak is the arrival "
        "rate at which p99 just meets the SLO, so a burst or a slower neighbour there breaks it, and a "
        "peak measured again on a shared machine moves by up to ~10%. A model whose service time varies "
        "(cv, the spread of its latency at one client) keeps {0} x (1 + cv²) free, at most 50%, and its "
        "open-loop steps wait for as many times more answers: a queue's waiting grows by that factor "
        "(Pollaczek-Khinchine).".replace("{0}", f"{load['headroom']:.0%}"),
        "- Replicas = the target rate over that, rounded up (and, with `--concurrency`, at least the "
        "clients over the most clients one replica carried within the SLO); $/hour = replicas x the "
        "profile's price; $ per 1M = $/hour over the inferences an hour of the target is.",
        f"- Memory: the replica's peak resident memory (the whole server) + {MEMORY_HEADROOM:.0%}, "
        "rounded up to a power-of-two size; a profile with less memory loses.", ""]


def _not_confirmed(results: dict[str, Any]) -> list[str]:
    """Where the pick's re-run did not hold, the report's first words say so (exit status 3)."""
    rerun = results["checks"].get("rerun") or {}
    if rerun.get("holds"):
        return []
    slo = results["slo_p99_ms"]
    if "p99_ms" not in rerun:
        return ["## NOT CONFIRMED: the pick's re-run did not complete", "",
                f"{rerun.get('error', 'not run')}: **no figure was checked**. `batchserve recommend` "
                "exits with status 3 for this.", ""]
    held = (f"What held: {rerun['carried_rps']:,.1f} requests/s answered at p99 {format_ms(rerun['p99_ms'])}."
            if rerun["p99_within_slo"] else "**Nothing held**: at one replica's share of the target, p99 "
            f"was {format_ms(rerun['p99_ms'])} against the SLO of {slo:g} ms; size with more headroom "
            "(`--headroom`) or measure again on a quieter machine.")
    return ["## NOT CONFIRMED: the pick did not hold when started again", "",
            f"Sent one replica's share of the target ({rerun['offered_rps']:,.1f}/s), it answered "
            f"{rerun['ratio']:.2f}{X} of what arrived at p99 {format_ms(rerun['p99_ms'])}. {held} "
            "`batchserve recommend` exits with status 3 for this.", ""]


def _checks(results: dict[str, Any]) -> list[str]:
    slo = results["slo_p99_ms"]
    checks = results["checks"]
    rerun = checks.get("rerun") or {}
    lines = ["## Checked by measuring it again", ""]
    if "error" in rerun or not rerun:
        lines += [f"Re-run of the pick: {rerun.get('error', 'not run')}.", ""]
    else:
        holds = rerun["holds"]
        lines += [
            "The pick's configuration, started again on its profile and sent one replica's share of the "
            "load open-loop:", "",
            "| | predicted | measured |", "|---|---|---|",
            f"| requests/s answered | {rerun['arrived_rps']:,.1f} (arrived; "
            f"{rerun['offered_rps']:,.1f} offered) | "
            f"{rerun['carried_rps']:,.1f} ({rerun['ratio']:.2f}{X}) |",
            f"| p99 | ≤ {slo:g} ms (the SLO) | {format_ms(rerun['p99_ms'])} |", "",
            ("It holds: throughput within 10% and p99 within the SLO." if holds else
             "**It does NOT hold**: " + "; ".join(
                 ([] if rerun["throughput_within_10pct"] else
                  [f"it answered {rerun['ratio']:.2f}{X} of what arrived (more than 10% off)"])
                 + ([] if rerun["p99_within_slo"] else
                    [f"p99 {format_ms(rerun['p99_ms'])} left the SLO of {slo:g} ms"])) + "."), ""]
    replicas = checks.get("replicas") or {}
    lines += ["### Two replicas behind nginx", ""]
    if "skipped" in replicas:
        lines += [f"Not checked: {replicas['skipped']}.", ""]
    elif "error" in replicas or replicas.get("measured_rps") is None:
        lines += [f"Not checked: {replicas.get('error', 'no arrival rate tried met the SLO')}.", ""]
    else:
        lines += [
            f"2 replicas of {replicas['profile']} (CPUs {replicas['cpus'][0]} and {replicas['cpus'][1]}), "
            f"round robin behind nginx, the load generator {replicas['generator']}:", "",
            "| | predicted (2 x one replica's peak) | measured (their open-loop peak) |", "|---|---|---|",
            f"| requests/s within the SLO | {replicas['predicted_rps']:,.1f} | "
            f"{replicas['measured_rps']:,.1f} "
            f"({replicas['ratio']:.2f}{X}) |", "",
            "The replica model holds (within 10%)." if replicas["within_10pct"] else
            f"**The replica model is off by more than 10%** ({replicas['ratio']:.2f}{X}): "
            + ("the replicas carried more than twice one; one replica's peak was measured low."
               if replicas["ratio"] > 1 else
               "two replicas carried less than twice one. "
               + ("Here nginx and the load generator ran on the replicas' own CPUs, taking their "
                  "share of them, so this measures less than two machines of their own would carry; "
                  "on a machine with CPUs to spare for them the check is clean."
                  if replicas["generator"].startswith("sharing") else
                  "The balancer costs the rest: size with this measured figure, not twice one's.")), ""]
    return lines


def _open_loop_table(entry: dict[str, Any]) -> list[str]:
    peak = entry.get("open_loop")
    if not peak:
        return []
    lines = ["Open-loop search (Poisson arrivals, latency from each arrival):", "",
             "| offered requests/s | carried | p50 | p99 | non-2xx | mean batch | within SLO |",
             "|---|---|---|---|---|---|---|"]
    for step in peak["steps"]:
        lines.append(f"| {step['offered_rps']:,.1f} | {step['carried_rps']:,.1f} | "
                     f"{format_ms(step['p50_ms'])} | {format_ms(step['p99_ms'])} | {step_tail(step)} |")
    return [*lines, ""]


def plot_profiles(path: Path, results: dict[str, Any]) -> None:
    """Two panels by profile: $ per 1M inferences at the load, and p99 at one replica's peak."""
    plt = pyplot()
    entries = results["profiles"]
    names = [e["profile"]["name"] for e in entries]
    figure, (cost_axes, p99_axes) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for index, entry in enumerate(entries):
        sizing = entry.get("sizing")
        picked = entry["profile"]["name"] == results["pick_profile"]
        color = "tab:green" if picked else "tab:blue"
        if sizing is None:
            why = "refused" if entry["refused"] else "misses the SLO"
            for axes in (cost_axes, p99_axes):
                axes.bar(index, 0)
                axes.annotate(why, (index, 0), xytext=(0, 4), textcoords="offset points", ha="center",
                              fontsize=7)
            continue
        cost_axes.bar(index, sizing["dollars_per_million"], color=color)
        cost_axes.text(index, sizing["dollars_per_million"], f"{sizing['replicas']} x", ha="center",
                       va="bottom", fontsize=8)
        inside = [s for s in entry["open_loop"]["steps"] if s["within_slo"]]
        if inside:
            top = max(inside, key=lambda s: s["offered_rps"])
            p99_axes.bar(index, top["p99_ms"], color=color)
    p99_axes.axhline(results["slo_p99_ms"], color="red", linestyle="--", linewidth=1,
                     label=f"SLO {results['slo_p99_ms']:g} ms")
    for axes in (cost_axes, p99_axes):
        axes.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        axes.grid(True, axis="y", alpha=0.3)
    cost_axes.set_ylabel("$ per 1M inferences at the load")
    cost_axes.set_title("cost (bars: replicas needed; green: the pick)", fontsize=9)
    p99_axes.set_ylabel("p99 at one replica's peak (ms)")
    p99_axes.set_title("latency at the peak arrival rate within the SLO", fontsize=9)
    p99_axes.legend(fontsize=8)
    figure.suptitle(f"{results['model']}: hardware profiles", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
