"""One worker process of a multi-worker server (``python -m batchserve.workers.worker``,
started by the supervisor, never by hand): the same app as a single-process server, with its
``cluster``, on the supervisor's ports (bound again here, with SO_REUSEPORT)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from batchserve.cluster.rundir import Cluster
from batchserve.config import ConfigError, ModelConfig, load_models
from batchserve.logs import configure_logging
from batchserve.settings import ServerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchserve.workers.worker", description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    _end_with_the_supervisor()
    cluster = Cluster(args.run_dir, args.index, args.count)
    settings = ServerSettings.model_validate_json(cluster.settings_path.read_text())
    configure_logging(settings, cluster.index)
    try:
        configs = load_models(settings.config)
    except ConfigError as exc:
        print(f"batchserve worker {cluster.index}: {exc}", file=sys.stderr)
        return 2
    return serve_worker(settings, configs, cluster)


def serve_worker(settings: ServerSettings, configs: list[ModelConfig], cluster: Cluster) -> int:
    from batchserve.app import create_app, create_management_app
    from batchserve.cluster.desired import apply_desired
    from batchserve.cluster.peers import make_peer_server, restore_routing
    from batchserve.serving import Listener, make_server, run_servers
    from batchserve.state import AppState

    # The supervisor holds the ports (serving.reserve_port); each worker's listener binds them too,
    # with SO_REUSEPORT, and the kernel spreads new connections over the workers.
    served, unloaded = apply_desired(cluster, configs)
    app = create_app(settings, served, cluster=cluster, unloaded=unloaded)
    state: AppState = app.state.batchserve
    restore_routing(state)
    servers: list[Listener] = [make_server(app, settings.port, state, lifespan="on"),
               make_peer_server(state)]  # management through any worker applies to all
    if settings.management_port is not None:
        servers.append(make_server(create_management_app(state), settings.management_port, state,
                                   lifespan="off"))
    if settings.grpc_port is not None:  # every worker serves the gRPC port too, spread likewise
        from batchserve.grpc_api.server import grpc_server

        servers.append(grpc_server(app, settings.grpc_port))
    run_servers(servers, state)
    return 0


def _end_with_the_supervisor() -> None:
    """SIGTERM this worker when its supervisor dies (Linux's PR_SET_PDEATHSIG), so that a
    supervisor killed outright leaves no worker behind; elsewhere the status writer's check of
    the parent pid does it, within half a second."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


if __name__ == "__main__":
    sys.exit(main())
