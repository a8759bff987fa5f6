"""The server's log lines: text (the default) or one JSON object per line (``--log-format json``),
with the ``trace_id`` and ``span_id`` of the request a line concerns when tracing is on.

JSON is written with orjson (a dependency already): a formatter of a dozen lines, where a JSON
logging package would be one more dependency for the same."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from batchserve.settings import ServerSettings

TraceIds = Callable[[], tuple[str, str] | None]


class JsonFormatter(logging.Formatter):
    """A record as ``{"time", "level", "logger", "message"}`` (``worker``, ``exception``,
    ``trace_id`` and ``span_id`` when there are)."""

    def __init__(self, worker: int | None, trace_ids: TraceIds | None) -> None:
        super().__init__()
        self.worker = worker
        self.trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if self.worker is not None:
            line["worker"] = self.worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if self.trace_ids is not None and (ids := self.trace_ids()) is not None:
            line["trace_id"], line["span_id"] = ids
        return orjson.dumps(line).decode()


def configure_logging(settings: ServerSettings, worker: int | None = None) -> None:
    """The root logger's level and format, for the server (``worker``: one of its processes)."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        trace_ids = None
        if settings.tracing:
            from batchserve.tracing import current_ids

            trace_ids = current_ids
        handler.setFormatter(JsonFormatter(worker, trace_ids))
    else:
        where = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
