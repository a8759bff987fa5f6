"""``batchserve`` command line: ``batchserve serve --config models/models.toml``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

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
    serve.add_argument("--log-format", choices=["text", "json"],
                       help="log lines as text (default) or JSON objects (with trace ids when tracing)")
    serve.add_argument("--tracing", action="store_true", default=None,
                       help="export OpenTelemetry traces (configured by the OTEL_* variables)")
    serve.add_argument("--management-port", type=int,
                       help="serve the management API on this port only (default: on --port)")
    serve.add_argument("--grpc-port", type=int,
                       help="serve the Open Inference Protocol over gRPC on this port too (Triton's: 8001)")
    serve.add_argument("--workers", type=_workers,
                       help="server processes behind the port (1; 'auto': from the cores and the models)")
    serve.add_argument("--access-log", action="store_const", const=True,
                       help="log one line per request: method, path, status, duration, model, X-Request-Id")
    serve.add_argument("--strict-readiness", type=_boolean, metavar="{true,false}",
                       help="/readyz 200 only once every model is ready (true); false: once every "
                            "model that loaded is ready, a failed one listed but not waited for")
    serve.add_argument("--shutdown-grace-s", type=float,
                       help="seconds queued requests get to finish after SIGTERM, all told (30; 0: none)")
    digest = commands.add_parser("sha256", help="print the digest to pin an artifact (file or folder)")
    digest.add_argument("path", type=Path)
    # Capacity planning (server/batchserve_planning) depends on the server, never the reverse: it
    # is imported here, when the parser is built, and its modules import only the standard library
    # at import time (the load generator, numpy, torch and matplotlib load when a command runs).
    from batchserve_planning import inspection, loadtest, recommend

    from batchserve import onnx_export

    export = commands.add_parser("export", help="write a served torch model as an ONNX graph, and "
                                 "print the drift of its outputs", description=onnx_export.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx_export.add_arguments(export)
    export.set_defaults(planning=onnx_export.run)

    for name, module, summary in (
        ("loadtest", loadtest, "load a running server from sample inputs; report throughput and latency"),
        ("recommend", recommend,
         "sweep batching configurations; recommend the best within a p99 SLO, and check it"),
        ("inspect", inspection, "a model's parameters, weight bytes and activation memory per batch size"),
    ):
        command = commands.add_parser(name, help=summary, description=module.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(planning=module.run)
    return parser


def tracing_problem(settings: ServerSettings) -> str | None:
    """Why ``--tracing`` can't work as the environment asks (``None``: it can, or it is off)."""
    if not settings.tracing:
        return None
    try:
        from batchserve.tracing import check_environment
    except ImportError as exc:
        return f"--tracing needs OpenTelemetry: pip install 'batchserve[tracing]' ({exc})"
    try:
        check_environment()
    except ValueError as exc:
        return f"--tracing: {exc}"
    return None


def grpc_problem(settings: ServerSettings) -> str | None:
    """Why ``--grpc-port`` can't be served (``None``: it can, or it is off)."""
    if settings.grpc_port is None:
        return None
    try:
        import batchserve.grpc_api.server  # noqa: F401 - imported for its dependencies
    except ImportError as exc:
        return f"--grpc-port needs gRPC: pip install 'batchserve[grpc]' ({exc})"
    return None


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _workers(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sha256":
        from batchserve.artifacts import artifact_sha256

        print(artifact_sha256(args.path))
        return 0
    if hasattr(args, "planning"):
        planning: Callable[[argparse.Namespace], int] = args.planning
        return _run_stoppable(planning, args)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return serve(ServerSettings(**overrides))


def _run_stoppable(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a planning command so that SIGTERM unwinds it as Ctrl-C does: its ``finally`` blocks
    stop the servers and load generators it started (Python's default for SIGTERM ends the
    process at once, and a candidate server would outlive it). SIGTERM interrupts as
    ``asyncio.Runner``'s SIGINT handler would (``_interrupt``), whether or not SIGINT is ignored
    (a background job of a non-interactive shell starts so; SIGINT then stays ignored). Exit
    status 143 (128 + SIGTERM), as the shell reports."""
    terminated = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True
        _interrupt()

    if threading.current_thread() is not threading.main_thread():
        return command(args)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return command(args)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if not terminated:
            raise
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt() -> None:
    """Interrupt the main thread from a signal handler: where an event loop runs in it, cancel its
    tasks, so that ``CancelledError`` unwinds the run (a KeyboardInterrupt raised inside one of
    uvloop's callbacks would be logged and the loop would go on; and ``asyncio.Runner`` installs
    no SIGINT handler where SIGINT was ignored); elsewhere raise ``KeyboardInterrupt``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise KeyboardInterrupt from None
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.call_soon_threadsafe(lambda: None)  # wake the loop, should it be waiting


def serve(settings: ServerSettings) -> int:
    from batchserve.app import create_app, create_management_app
    from batchserve.logs import configure_logging
    from batchserve.serving import Listener, make_server, reserve_port, run_servers
    from batchserve.state import AppState

    configure_logging(settings)
    try:
        configs = load_models(settings.config)
    except ConfigError as exc:
        print(f"batchserve: {exc}", file=sys.stderr)
        return 2
    if (problem := tracing_problem(settings) or grpc_problem(settings)) is not None:
        print(f"batchserve: {problem}", file=sys.stderr)
        return 2
    if settings.workers != 1:
        from batchserve.cluster.cores import auto_workers, available_cores, available_memory
        from batchserve.workers.supervisor import Supervisor

        cores = available_cores()
        count = (auto_workers(configs, cores, available_memory()) if settings.workers == "auto"
                 else settings.workers)
        if count > 1:
            return Supervisor(settings, count, cores).run()
        settings = settings.model_copy(update={"workers": 1})
    app = create_app(settings, configs)
    state: AppState = app.state.batchserve
    with contextlib.ExitStack() as ports:
        main = ports.enter_context(reserve_port(settings.host, settings.port))
        servers: list[Listener] = [make_server(app, main.getsockname()[1], state, lifespan="on")]
        if settings.management_port is not None:  # the main app's lifespan loads and closes the models
            management = ports.enter_context(reserve_port(settings.host, settings.management_port))
            servers.append(make_server(create_management_app(state), management.getsockname()[1],
                                       state, lifespan="off"))
        if settings.grpc_port is not None:
            from batchserve.grpc_api.server import grpc_server

            grpc_port = ports.enter_context(reserve_port(settings.host, settings.grpc_port))
            servers.append(grpc_server(app, grpc_port.getsockname()[1]))
        run_servers(servers, state)
    return 0
