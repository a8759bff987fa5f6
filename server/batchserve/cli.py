"""``batchserve`` command line: ``batchserve serve --config models/models.toml``."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from batchserve.config import ConfigError, load_models
from batchserve.settings import ServerSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models of a models.toml over HTTP")
    serve.add_argument("--config", type=Path, help="model repository file (models/models.toml)")
    serve.add_argument("--host", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (8000; 0 picks a free one)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--shutdown-grace-s", type=float,
                       help="seconds queued requests get to finish after SIGTERM (30)")
    digest = commands.add_parser("sha256", help="print the digest to pin an artifact (file or folder)")
    digest.add_argument("path", type=Path)
    # Capacity planning (server/batchserve_planning): their modules import only the standard library
    # at import time; the load generator, numpy, torch and matplotlib load when a command runs.
    from batchserve_planning import inspect, loadtest, recommend

    for module, summary in (
        (loadtest, "load a running server from sample inputs; report throughput and latency"),
        (recommend, "sweep batching configurations; recommend the best within a p99 SLO, and check it"),
        (inspect, "a model's parameters, weight bytes and activation memory per batch size"),
    ):
        command = commands.add_parser(module.__name__.rpartition(".")[2], help=summary,
                                      description=module.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(planning=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sha256":
        from batchserve.registry import artifact_sha256

        print(artifact_sha256(args.path))
        return 0
    if hasattr(args, "planning"):
        planning: Callable[[argparse.Namespace], int] = args.planning
        return planning(args)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return serve(ServerSettings(**overrides))


def serve(settings: ServerSettings) -> int:
    import uvicorn

    from batchserve.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configs = load_models(settings.config)
    except ConfigError as exc:
        print(f"batchserve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, configs)
    state = app.state.batchserve

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Refuse new requests (503) at once; uvicorn then waits for the in-flight ones.
            state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=False, loop="uvloop", http="httptools", limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) or None,
    )
    server = Server(config)
    # uvicorn re-raises the signal it drained on, to its previous handler. A drained
    # SIGTERM/SIGINT is a clean stop (exit 0, as `docker stop` and Kubernetes expect),
    # so that previous handler does nothing.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _already_drained)
    server.run()
    return 0


def _already_drained(sig: int, frame: FrameType | None) -> None:
    """Called once uvicorn has shut down gracefully on ``sig``: nothing is left to do."""

