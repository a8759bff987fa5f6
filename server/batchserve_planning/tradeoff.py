"""The trade-off section of ``recommend``'s report: what the pick gave up and what it gained,
in the run's own numbers."""

from __future__ import annotations

from typing import Any

from batchserve_planning.formats import X, batch_text, mib_text, rate_text
from batchserve_planning.load.results import format_ms


def tradeoff(results: dict[str, Any], pick: dict[str, Any]) -> list[str]:
    slo = results["slo_p99_ms"]
    best = pick["best"]  # sweep figures, comparable with the other candidates' sweep figures
    sentences = []
    measured = [o for o in results["candidates"] if o["steps"]]
    fastest = max((s["rows_per_s"], s["p99_ms"], o["label"]) for o in measured for s in o["steps"])
    if fastest[0] > best["rows_per_s"] * 1.02 and fastest[1] > slo:
        sentences.append(
            "- More throughput costs latency: the most measured at any latency was "
            f"{rate_text(fastest[0])}/s "
            f"({fastest[2]}) at p99 {format_ms(fastest[1])}, "
            f"{fastest[0] / best['rows_per_s']:.2f}{X} the pick, "
            f"outside the SLO of {slo:g} ms.")
    elif fastest[0] > best["rows_per_s"] * 1.02:
        sentences.append(
            f"- The fastest sweep step, {rate_text(fastest[0])}/s ({fastest[2]}) at p99 "
            f"{format_ms(fastest[1])}, was within the SLO but did not hold up when measured again in "
            "the final round; the pick is what held up.")
    else:
        sentences.append("- No candidate went meaningfully faster at any latency: the pick is at the "
                         "throughput limit of this machine for this model, not held back by the SLO.")
    singles = [s for o in measured for s in o["steps"] if s["concurrency"] == 1]
    if singles:
        low = min(singles, key=lambda s: s["p50_ms"])
        sentences.append(f"- Latency floor: one client at a time saw p50 {format_ms(low['p50_ms'])} "
                         f"(p99 {format_ms(low['p99_ms'])}) at best; under the recommended load p50 is "
                         f"{format_ms(best['p50_ms'])}: the rest is queueing and batching.")
    unbatched = [o for o in measured if o["candidate"]["max_batch_size"] == 1 and o["best"]]
    if unbatched and pick["candidate"]["max_batch_size"] > 1:
        rate = unbatched[0]["best"]["rows_per_s"]
        sentences.append(f"- Batching: max_batch_size 1 reached {rate_text(rate)}/s within the SLO; the pick "
                         f"is {best['rows_per_s'] / rate:.2f}{X} that.")
    sentences += _batch_series(measured, pick)
    for key, name in (("max_wait_ms", "max_wait_ms"), ("workers", "workers"), ("instances", "instances")):
        same = [o for o in measured if o["best"] and all(
            o["candidate"].get(k) == pick["candidate"].get(k) for k in pick["candidate"]
            if k not in (key, "torch_threads"))
            and o is not pick]
        for other in same:
            ratio = other["best"]["rows_per_s"] / best["rows_per_s"]
            sentences.append(f"- {name} {other['candidate'][key]:g} instead of {pick['candidate'][key]:g}: "
                             f"{ratio:.2f}{X} the throughput, p99 {format_ms(other['best']['p99_ms'])}, "
                             f"server peak memory {mib_text(other['peak_rss_bytes'])} against "
                             f"{mib_text(pick['peak_rss_bytes'])}.")
    return sentences


def _batch_series(measured: list[dict[str, Any]], pick: dict[str, Any]) -> list[str]:
    """The pick's batch sizes side by side at one load (the most clients every one of them was
    measured at): why a bigger batch raises throughput and latency, in this run's numbers."""
    same = sorted((o for o in measured if all(o["candidate"].get(k) == v for k, v in pick["candidate"].items()
                                              if k not in ("max_batch_size", "torch_threads"))),
                  key=lambda o: o["candidate"]["max_batch_size"])
    if len(same) < 2:
        return []
    common = set.intersection(*({s["concurrency"] for s in o["steps"]} for o in same))
    if not common:
        return []
    clients = max(common)
    steps = [next(s for s in o["steps"] if s["concurrency"] == clients) for o in same]
    cells = [f"batch {o['candidate']['max_batch_size']}: {rate_text(s['rows_per_s'])}/s, "
             f"p50 {format_ms(s['p50_ms'])} (mean batch {batch_text(s['mean_batch_size'])})"
             for o, s in zip(same, steps, strict=True)]
    top = max(range(len(steps)), key=lambda i: steps[i]["rows_per_s"])
    first, best = steps[0], steps[top]
    words = [f"- Batch size at {clients} concurrent clients: " + "; ".join(cells) + "."]
    if best["rows_per_s"] > first["rows_per_s"] * 1.05:
        sizes = same[0]["candidate"]["max_batch_size"], same[top]["candidate"]["max_batch_size"]
        words.append(f"Throughput rose {best['rows_per_s'] / first['rows_per_s']:.2f}{X} from batch "
                     f"{sizes[0]} to {sizes[1]}: "
                     "a batch's fixed costs (one model call, one hand-off to the model's thread, the "
                     "per-batch bookkeeping) are shared by its rows.")
    if best["p50_ms"] < first["p50_ms"]:
        words.append("With a fixed number of clients, latency is clients over throughput (Little's law), "
                     "so p50 fell as throughput rose; what a bigger batch costs in latency is the time one "
                     "batch takes to run, which a row waits out whole, and any max_wait_ms it waits for "
                     "company: the lone-client floor above, and the open-loop steps at a set arrival rate, "
                     "show it.")
    else:
        words.append("p50 rose with the batch: each batch takes longer to run, and a row waits for all "
                     "of its batch, so past the batch size the SLO allows, more throughput costs latency.")
    return [" ".join(words)]
