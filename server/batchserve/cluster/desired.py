"""What management made of the models, for a worker that (re)starts: ``desired.json`` in the
run directory (``cluster/rundir.py``).

One record per model name (``name:version`` for a version, ``ModelConfig.key``), and the
routing management set on a model with versions (``routing.py``; ``previous`` for a rollback;
a reload records its versions and, where management's routing stands, that routing over them)::

    {"models": {"echo": {"config": {...}, "served": true, "overrides": {"max_batch_size": 4}}},
     "routing": {"diabetes": {"current": {"weights": {...}, "shadows": {...}}, "previous": ...}}}

``config`` is the repository table the workers serve (as ``ModelConfig`` dumps it), ``served``
false once it was unloaded, ``overrides`` what PATCH changed (applied over ``config``, and over
every later reload). The first worker to start records the configs it read from the repository
file; each management change that went through records its result. A restarted worker takes
its models from here, not from the repository file, so that it serves what the others serve
(and knows as unloaded what they unloaded) even when the file changed since (the others read
the file again only when told to load).

Writes are whole-file (a temporary file, then ``os.replace``) under a lock of their own
(``flock(2)`` on ``desired.lock``): a reader never sees half a file, and two changes to
different models never lose one another.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from batchserve.cluster.rundir import Cluster
from batchserve.config import ModelConfig

Desired = dict[str, dict[str, Any]]
"""Model name -> its record (``config``, ``served``, ``overrides``)."""


class Recorded(NamedTuple):
    """The models a (re)starting worker builds: those it serves and loads, and those management
    unloaded (known, so a request for one gets the 503 every other worker gives, not a 404)."""

    served: list[ModelConfig]
    unloaded: list[ModelConfig]


def apply_desired(cluster: Cluster, configs: list[ModelConfig]) -> Recorded:
    """The models a (re)starting worker builds: ``configs`` (read from the repository file)
    for a model of which nothing is recorded yet (and recorded now, for the workers that start
    after), else what is recorded: the recorded versions, with their PATCHed settings, served
    or unloaded. Models loaded by management since the start come after the file's."""
    def merge(models: Desired) -> None:
        recorded = {record["config"]["name"] for record in models.values()}
        for config in configs:
            if config.name not in recorded:
                models[config.key] = {"config": config.model_dump(mode="json"), "served": True,
                                      "overrides": {}}

    models = _update(cluster, merge)
    built = [(record["served"], ModelConfig.model_validate(record["config"]).model_copy(
        update=record["overrides"])) for record in models.values()]
    return Recorded([config for served, config in built if served],
                    [config for served, config in built if not served])


def record_overrides(cluster: Cluster, name: str, changes: dict[str, Any]) -> None:
    """A PATCH of ``name`` (each of its versions): its settings outlive restarts of a worker as
    they outlive reloads."""
    def change(models: Desired) -> None:
        for record in _entries(models, name):
            record["overrides"] = {**record["overrides"], **changes}

    _update(cluster, change)


def record_load(cluster: Cluster, name: str, configs: list[ModelConfig],
                routing: dict[str, Any] | None) -> None:
    """Every worker staged ``configs``: they are what ``name`` serves from now on (a version
    they leave out is no longer recorded); ``routing`` is management's routing over them,
    where it stands (``None``: the repository file's applies)."""
    def change(models: Desired) -> None:
        before = {key: models.pop(key) for key in [k for k, r in models.items()
                                                    if r["config"]["name"] == name]}
        for config in configs:
            overrides = before.get(config.key, {}).get("overrides", {})
            models[config.key] = {"config": config.model_dump(mode="json"), "served": True,
                                  "overrides": overrides}

    with _locked(cluster.run_dir / "desired.lock"):
        data = _read(cluster)
        change(data.setdefault("models", {}))
        records = data.setdefault("routing", {})
        if routing is None:
            records.pop(name, None)
        else:
            records[name] = {"current": routing, "previous": records.get(name, {}).get("previous")}
        _write_atomically(cluster.desired_path, data)


def record_unload(cluster: Cluster, name: str) -> None:
    """``name`` (each of its versions) is no longer served (a restarted worker does not load it)."""
    def change(models: Desired) -> None:
        for record in _entries(models, name):
            record["served"] = False

    _update(cluster, change)


def _entries(models: Desired, name: str) -> list[dict[str, Any]]:
    """The records of ``name``: the model's, each of its versions', or the one a key names."""
    if name in models:
        return [models[name]]
    return [record for record in models.values() if record["config"]["name"] == name]


def record_routing(cluster: Cluster, name: str, current: dict[str, Any],
                   previous: dict[str, Any] | None) -> None:
    """Management changed ``name``'s routing to ``current`` (from ``previous``, for a rollback)."""
    with _locked(cluster.run_dir / "desired.lock"):
        data = _read(cluster)
        data.setdefault("routing", {})[name] = {"current": current, "previous": previous}
        _write_atomically(cluster.desired_path, data)


def read_routing(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Model name -> ``{"current", "previous"}``: the routing management set on it, if any."""
    routing: dict[str, dict[str, Any]] = _read(cluster).get("routing", {})
    return routing


def overrides(cluster: Cluster, name: str) -> dict[str, Any]:
    """The settings PATCH changed on ``name``, cluster-wide (a restarted worker's registry
    knows of none, so a reload there applies these)."""
    record = read_desired(cluster).get(name)
    return dict(record["overrides"]) if record is not None else {}


def read_desired(cluster: Cluster) -> Desired:
    """The records as they stand (none before the first worker started)."""
    models: Desired = _read(cluster).get("models", {})
    return models


def _read(cluster: Cluster) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(cluster.desired_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data


def _update(cluster: Cluster, change: Callable[[Desired], None]) -> Desired:
    """Read, change and write the records under their lock; the records as written."""
    with _locked(cluster.run_dir / "desired.lock"):
        data = _read(cluster)
        models: Desired = data.setdefault("models", {})
        change(models)
        _write_atomically(cluster.desired_path, data)
        return models


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
