"""``batchserve recommend``: the configuration with the most throughput within a p99 SLO, checked.

For each candidate (workers at the configured max_batch_size, then max_batch_size over powers
of two up to a cap with the workers that won, then max_wait_ms and instances around the best,
per device and dtype) it starts ``batchserve
serve --workers N`` with a generated models.toml, ramps closed-loop load from the sample
inputs until p99 leaves the SLO, and records the best throughput inside it and the
server's peak memory, all its workers together. Workers x instances stay within the cores
the servers may use (``--server-cpus``, else this process's). Then it starts the pick
again, measures it once more, and reports measured against predicted. Output:
``report.md``, ``frontier.png`` and ``results.json`` in ``--out`` (default: a new folder
under ``reports/``). ``--full-grid`` measures every combination instead of searching one
setting at a time. With ``--hardware``, every profile of the file is measured so on its share
of this machine and sized to ``--target-rps`` / ``--concurrency`` (``profiles_run``, ``fleet``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

NO_PICK = 1
"""Exit status: no candidate (no profile, with ``--hardware``) met the SLO."""
BAD_INPUT = 2
NOT_CONFIRMED = 3
"""Exit status: a pick was made, but starting it again did not hold (throughput within 10% and
p99 within the SLO); the report leads with that and with what did hold."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from batchserve_planning import runtimes
    from batchserve_planning.loadtest import cpu_set

    parser.add_argument("--config", type=Path, default=Path("models/models.toml"),
                        help="model repository file (models/models.toml)")
    parser.add_argument("--model", required=True, help="model to size, by name")
    parser.add_argument("--version", help="one version of a model with versions: every candidate "
                                          "serves it alone, and the requests name it")
    parser.add_argument("--inputs", type=Path, required=True, help="sample inputs, as for loadtest")
    parser.add_argument("--slo-p99-ms", type=float, required=True, help="latency target: p99 in ms")
    parser.add_argument("--price-per-hour", type=float, help="machine price per hour, for costs")
    parser.add_argument("--hardware", type=Path,
                        help="candidate machines (TOML [[profiles]]: models/hardware.example.toml): "
                             "each measured on its share of this machine, sized and priced")
    parser.add_argument("--target-rps", type=float, help="with --hardware: requests/s to carry (arrivals)")
    parser.add_argument("--concurrency", type=int, help="with --hardware: concurrent clients to carry")
    parser.add_argument("--headroom", type=float, default=0.2,
                        help="with --hardware: share of a replica's peak kept free (0.2)")
    parser.add_argument("--max-replicas", type=int, default=64,
                        help="with --hardware: most replicas of one profile (64)")
    parser.add_argument("--devices", default=None, help="comma-separated: cpu, cuda, cuda:N (the config's)")
    parser.add_argument("--dtypes", help="torch backends on GPU: comma-separated (float32,float16); "
                                         "with --runtimes, the precisions (float32,int8 on CPU)")
    parser.add_argument("--max-batch-cap", type=int,
                        help="largest max_batch_size tried (2x the config's, 8 to 64)")
    parser.add_argument("--max-wait-ms", default="0,2,5", help="waits tried (0,2,5)")
    parser.add_argument("--instances", default="1,2", help="instances tried (1,2)")
    parser.add_argument("--workers", default="auto",
                        help="server processes tried, within the servers' cores (auto: 1, 2, 4, ... "
                             "up to them; more only while throughput grows)")
    parser.add_argument("--full-grid", action="store_true", help="every combination, not a search")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no candidate that would not leave time for the final round and "
                             "the checks within this many seconds, all profiles together (300)")
    parser.add_argument("--max-concurrency", type=int, default=512, help="most clients in a ramp (512)")
    parser.add_argument("--step-s", type=float, default=1.5,
                        help="shortest first run of a step, its windows together (1.5)")
    parser.add_argument("--max-step-s", type=float, default=8.0, help="longest step of a ramp (8)")
    parser.add_argument("--min-responses", type=int, default=300,
                        help="a step goes on until this many answers, up to --max-step-s (300)")
    parser.add_argument("--windows", type=int, default=3,
                        help="windows in a row that must agree for a figure to count (3)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="how closely they must agree: their range within this share of their "
                             "mean (0.10)")
    parser.add_argument("--max-windows", type=int, default=6,
                        help="most windows measured for one figure before it is reported unsettled (6)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http",
                        help="how the model is called: http (REST), or grpc (ModelInfer, each candidate "
                             "server given a --grpc-port) (http)")
    parser.add_argument("--rows-per-request", type=int, default=1, help="items per request (1)")
    parser.add_argument("--image-mode", choices=["raw", "base64"], default="raw")
    parser.add_argument("--parameters", type=json.loads, help="JSON request parameters")
    parser.add_argument("--server-cpus", type=cpu_set, help="pin the servers to these cores, e.g. 0")
    parser.add_argument("--load-cpus", type=cpu_set, help="pin the load generator, e.g. 1")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes (1)")
    parser.add_argument("--out", type=Path, help="report folder (a new one under reports/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    runtimes.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from batchserve.backends import backend_class
    from batchserve.config import ConfigError, load_models
    from batchserve.versions import one_version

    from batchserve_planning.accuracy import parse_limits
    from batchserve_planning.choices import choose, device_dtypes, inspect_size
    from batchserve_planning.input_kinds import input_kind_of_table
    from batchserve_planning.ladder import batch_cap
    from batchserve_planning.load.inputs import InputError, load_samples
    from batchserve_planning.ramp import RampSettings
    from batchserve_planning.runtime_tables import model_table, onnx_kind
    from batchserve_planning.runtimes import with_runtimes
    from batchserve_planning.stability import Rule
    from batchserve_planning.sweep import Sweep, server_cores, worker_counts

    if args.hardware is None and (args.target_rps is not None or args.concurrency is not None):
        print("batchserve recommend: --target-rps and --concurrency size a fleet: give the candidate "
              "machines with --hardware", file=sys.stderr)
        return 2
    if args.hardware is not None and (args.runtimes or args.max_drift):
        print("batchserve recommend: --runtimes and --max-drift search one machine: leave out --hardware",
              file=sys.stderr)
        return 2
    if args.protocol == "grpc" and args.hardware is not None:
        print("batchserve recommend: --hardware checks two replicas behind nginx, over HTTP only: "
              "size a fleet over http, or measure one machine over grpc (no --hardware)", file=sys.stderr)
        return 2
    skipped_inputs: list[str] = []
    try:
        load_models(args.config)  # the whole file must be valid, as the server would see it
        base = model_table(args.config, args.model)
        if args.version is not None:
            base = one_version(base, args.version)
        has_dtype = "dtype" in backend_class(base["backend"]).Options.model_fields
        combos = with_runtimes(args, base, device_dtypes(args, base, has_dtype))
        searched = onnx_kind(base["backend"]) if args.runtimes else None
        limits = parse_limits(args.max_drift, searched)
        workers = worker_counts(args.workers, server_cores(args.server_cpus))
        samples = load_samples(args.inputs, input_kind_of_table(base), on_skip=skipped_inputs.append)
        rule = Rule(args.windows, args.tolerance, args.max_windows)
    except (ConfigError, InputError, ValueError, LookupError) as exc:
        print(f"batchserve recommend: {exc}", file=sys.stderr)
        return 2
    for note in skipped_inputs:
        print(f"batchserve recommend: {note}", file=sys.stderr)
    settings = RampSettings(slo_ms=args.slo_p99_ms, max_concurrency=args.max_concurrency,
                            step_s=args.step_s, max_step_s=args.max_step_s,
                            min_responses=args.min_responses, rows_per_request=args.rows_per_request,
                            processes=args.processes, load_cpus=args.load_cpus, rule=rule)
    out = args.out or Path("reports") / f"recommend-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.version is not None:  # from here on, the repository is that version alone
        args.config, base = _version_config(args.config, base, out / "logs" / "version.toml")
    if args.hardware is not None:
        from batchserve_planning.profiles_run import run_profiles

        return run_profiles(args, base, samples, settings, out, skipped_inputs)
    sweep = Sweep(args, base, samples, settings, out)
    from batchserve_planning.load.progress import Bars

    with Bars(not args.no_progress) as bars:
        sweep.bars = bars
        size, memory_by_input = inspect_size(args.config, args.model, bars, batch_cap(args, base))
        prepared = _prepare_runtimes(args, sweep, combos, searched, limits)
        if prepared is None:
            return 2
        combos, graphs = prepared
        outcomes, skipped = sweep.search(combos)
        try:
            finals = sweep.final_round(outcomes)
            pick, predicted = choose(outcomes, finals, sweep.notes)
            verification = sweep.verify(pick, predicted) if pick is not None and predicted else None
        finally:
            sweep.close()
    from batchserve_planning.contention import summary
    from batchserve_planning.report import write

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "model": args.model,
        "version": args.version,
        "config": str(args.config), "inputs": str(args.inputs),
        "input_notes": skipped_inputs, "slo_p99_ms": args.slo_p99_ms,
        "price_per_hour": args.price_per_hour, "budget_s": args.budget_s,
        "elapsed_s": time.monotonic() - sweep.started, "model_table": base, "model_size": size,
        "memory_by_input": memory_by_input,
        "settings": {"step_s": settings.step_s, "max_step_s": settings.max_step_s,
                     "min_responses": settings.min_responses, "warmup_s": settings.warmup_s,
                     "max_concurrency": settings.max_concurrency, "full_grid": args.full_grid,
                     "rows_per_request": settings.rows_per_request, "protocol": args.protocol,
                     "sent": sweep.sent,
                     "server_cpus": sorted(args.server_cpus or []),
                     "server_cores": server_cores(args.server_cpus), "workers": workers,
                     "load_cpus": sorted(args.load_cpus or [])},
        "candidates": [o.to_dict() for o in outcomes], "skipped": [c.label() for c in skipped],
        "final_round": sweep.finals.entries(outcomes, finals),
        "pick": outcomes.index(pick) if pick is not None else None,
        "predicted": asdict(predicted) if predicted else None, "verification": verification,
        "decisions": list(dict.fromkeys(sweep.notes)),
        "runtimes": graphs, "accuracy": sweep.accuracy.to_dict() if sweep.accuracy else None,
        "stability": asdict(settings.rule),
        "contention": summary(
            [(f"#{i + 1} @ {s.concurrency} clients", asdict(s))
             for i, o in enumerate(outcomes) for s in o.steps]
            + [(f"final round #{outcomes.index(o) + 1}", asdict(s)) for o, s in finals]
            + ([("re-run of the pick", verification["step"])] if verification and "step" in verification
               else [])),
    }
    markdown = write(out, results)
    print(markdown)
    print(f"\nwrote {out}/report.md, frontier.png and results.json")
    if pick is None:
        return NO_PICK
    return 0 if verification and verification.get("holds") else NOT_CONFIRMED


def _version_config(config: Path, base: dict[str, Any], path: Path) -> tuple[Path, dict[str, Any]]:
    """A repository file at ``path`` of ``base`` (one version, ``versions.one_version``) alone,
    its artifact's path made absolute; that file, and the table."""
    from batchserve_planning.serverproc import toml_table
    from batchserve_planning.sweep import repository_table

    table = {**base, "path": str((config.parent / base["path"]).resolve())}
    path.write_text(toml_table(repository_table(config), "[repository]") + "\n" + toml_table(table))
    return path, table


def _prepare_runtimes(args: argparse.Namespace, sweep: Any, combos: list[Any], kind: str | None,
                      limits: dict[str, float]) -> tuple[list[Any], list[dict[str, Any]]] | None:
    """With ``--runtimes``: the ONNX graphs (``runtimes.prepare``) and the reference's outputs
    (``accuracy``), inside the budget; None where that failed (said on stderr)."""
    from batchserve_planning.accuracy import Accuracy
    from batchserve_planning.load.scrape import ServerError
    from batchserve_planning.runtimes import prepare

    if kind is None:
        return combos, []
    try:
        combos, graphs = prepare(args, combos, sweep.samples, sweep.out, sweep.bars)
        sweep.accuracy = Accuracy(kind, limits, sweep.samples, args.model, args.parameters)
        sweep.accuracy.measure_reference(sweep, combos[0].device)
    except (ValueError, RuntimeError, OSError, ServerError) as exc:
        print(f"batchserve recommend: {exc}", file=sys.stderr)
        return None
    return combos, graphs
