"""``batchserve loadtest``: load against a running server from the user's sample inputs.

Closed loop (``--concurrency`` clients) or open loop (``--rate`` Poisson arrivals per
second); a duration or a request count after a warm-up. Writes ``report.json`` and
``report.md`` to ``--out`` (default: a new folder under ``reports/``) and prints the
markdown; the mean batch size comes from the server's ``/metrics`` over the window.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server (http://127.0.0.1:8000)")
    parser.add_argument("--model", required=True, help="model name, as in /predict/{model}")
    parser.add_argument("--version", help="one version of a model with versions, as in "
                                          "/predict/{model}/versions/{version} (default: as routed)")
    parser.add_argument("--inputs", type=Path, required=True,
                        help="sample inputs: .json/.jsonl items, .txt lines, images, or a folder of them "
                             "(from a folder: the files of the model's input kind, as /models/{model} says)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="closed loop: concurrent clients; open loop: most connections (16)")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration-s", type=float, help="measure this long (10)")
    length.add_argument("--requests", type=int, help="measure this many requests instead")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before measuring (2)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="a request's client timeout (30)")
    parser.add_argument("--rows-per-request", type=int, default=1, help="items per request (1)")
    parser.add_argument("--image-mode", choices=["raw", "base64"], default="raw",
                        help="images as the raw body (one per request) or base64 in JSON (raw)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http",
                        help="/predict over HTTP, or the Open Inference Protocol's ModelInfer over gRPC "
                             "(the server's --grpc-port, on --url's host) (http)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="the server's gRPC port (8001)")
    parser.add_argument("--parameters", type=json.loads, help="JSON object sent as the request parameters")
    parser.add_argument("--processes", type=int, default=1,
                        help="load generator processes (1; more where cores are spare)")
    parser.add_argument("--load-cpus", type=cpu_set, help="cores the load generator may use, e.g. 1 or 2-3")
    parser.add_argument("--seed", type=int, default=0, help="open loop arrivals (0)")
    parser.add_argument("--out", type=Path, help="report folder (a new one under reports/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cpu_set(text: str) -> set[int]:
    """Cores in taskset's notation: ``0``, ``2-3``, ``0,2-3``."""
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def run(args: argparse.Namespace) -> int:
    from batchserve_planning.load.inputs import InputError, build_requests, load_samples, server_input_kind
    from batchserve_planning.load.measure import measure
    from batchserve_planning.load.scrape import ServerError, model_metadata, model_state
    from batchserve_planning.load.shared import LoadSpec

    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        print(f"batchserve loadtest: --url must be http://HOST:PORT, not {args.url!r}", file=sys.stderr)
        return 2
    base_url = f"http://{url.hostname}:{url.port or 80}"
    model = args.model if args.version is None else f"{args.model}:{args.version}"  # its key
    try:
        state = model_state(base_url, model)
        if state.get("state") != "ready":
            raise ServerError(f"model {args.model!r} is {state.get('state')}: {state.get('error', '')}")
        kind = server_input_kind(base_url, model)
    except ServerError as exc:
        print(f"batchserve loadtest: {exc}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    try:
        samples = load_samples(args.inputs, kind, on_skip=skipped.append)
        if args.protocol == "grpc":
            from batchserve_planning.load.grpc_client import build_grpc_requests

            requests = build_grpc_requests(samples, model_metadata(base_url, model), model=args.model,
                                           port=args.grpc_port, version=args.version or "",
                                           rows_per_request=args.rows_per_request,
                                           parameters=args.parameters)
        else:
            requests = build_requests(samples, host=url.hostname, port=url.port or 80,
                                      model=model, rows_per_request=args.rows_per_request,
                                      image_mode=args.image_mode, parameters=args.parameters)
    except ServerError as exc:
        print(f"batchserve loadtest: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"batchserve loadtest: model {args.model!r} takes {kind} input: {exc}", file=sys.stderr)
        return 2
    for note in skipped:
        print(f"batchserve loadtest: {note}", file=sys.stderr)
    duration_s = None if args.requests else (args.duration_s or 10.0)
    spec = LoadSpec(url.hostname, requests.port or url.port or 80, requests.requests,
                    mode="open" if args.rate else "closed", concurrency=args.concurrency,
                    rate=args.rate or 0.0, duration_s=duration_s, count=args.requests,
                    warmup_s=args.warmup_s, timeout_s=args.timeout_s, seed=args.seed,
                    protocol=requests.protocol)
    try:
        summary = measure(spec, base_url, model, requests.rows_per_request,
                          processes=args.processes, cpus=args.load_cpus, progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"batchserve loadtest: {exc}", file=sys.stderr)
        return 1
    out = args.out or Path("reports") / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(), "url": base_url, "model": args.model,
        "version": args.version,
        "inputs": {"path": str(args.inputs), "kind": kind, "description": requests.description,
                   "skipped": skipped},
        "settings": {"protocol": spec.protocol, "warmup_s": spec.warmup_s, "duration_s": spec.duration_s,
                     "requests": spec.count, "timeout_s": spec.timeout_s, "seed": spec.seed},
        "result": summary.to_dict(),
    }
    markdown = write_report(out, report)
    print(markdown)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


def machine() -> str:
    import os

    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def write_report(out: Path, report: dict[str, Any]) -> str:
    from batchserve_planning.load.results import Summary, markdown_table

    result = report["result"]
    summary = Summary(**result)
    if summary.mode == "closed":
        load = f"closed loop, {summary.concurrency} concurrent clients"
    else:
        load = (f"open loop, Poisson arrivals at {summary.rate:g}/s over at most "
                f"{summary.concurrency} connections")
    settings = report["settings"]
    length = (f"{summary.requests:,} requests" if settings["requests"]
              else f"{summary.window_s:.1f} s")
    lines = [
        f"# Load test: `{report['model']}` at {report['url']}", "",
        f"{report['date']}; {report['machine']}.",
        f"Load: {load}, {length} measured after {settings['warmup_s']:g} s of warm-up, "
        f"{summary.processes} load process(es). Inputs: `{report['inputs']['path']}`, "
        f"{report['inputs']['description']}.", *report['inputs'].get('skipped', []), "",
        markdown_table(summary), "",
    ]
    if summary.mode == "open":
        lag = summary.send_lag_ms
        lines += [f"Requests were sent {lag['p50']:.2f} ms (p50) / {lag['p99']:.2f} ms (p99) after their "
                  f"arrival time; at most {summary.max_backlog} arrivals waited for a free connection. "
                  "Latency counts from the arrival.", ""]
    if summary.error_examples:
        lines += ["Error examples (first response body of each status):", ""]
        lines += [f"- `{status}`: `{body.strip()[:300]}`" for status, body in summary.error_examples.items()]
        lines.append("")
    markdown = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown)
    return markdown
