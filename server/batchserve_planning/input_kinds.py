"""A model's input kind from the repository file, for the planner commands that start their own
servers (``recommend``); against a running server, ``load.inputs.server_input_kind``. This half
imports the server's backends, which the load client (``batchserve_planning.load``) must not."""

from __future__ import annotations

from typing import Any


def input_kind_of_table(table: dict[str, Any]) -> str:
    """The input kind of a ``[[models]]`` table's backend (``Backend.input_kind``): what its server
    publishes at ``GET /models/{name}`` as ``input_kind``, from the same declaration. Raises
    ``LookupError`` for an unknown backend."""
    from batchserve.backends import backend_class

    return backend_class(str(table["backend"])).input_kind
