"""The backend contract: what a model must provide to be served by batchserve.

A backend is constructed with its model's configuration, then ``load`` and
``warmup`` run on a worker thread before the model reports ready. For each
request, ``parse_parameters``, ``check_items`` (the items together) and
``preprocess`` (each item) turn the client's items into rows (``Row``); rows
from many requests are batched and handed to
``predict_batch`` on an executor thread (or, for a backend that allows it with
``predict_on_loop_when_cheap``, on the event loop when a batch is measured to be
cheaper than the hop), which returns exactly one ``Output``
per row, or a ``RowError`` in place of the output of a row that alone failed.

Outputs are JSON-serialisable (``/predict`` sends them as they are). Wire
formats other than JSON (the Open Inference Protocol's tensors) are converted
by codecs beside each protocol (``batchserve/v2/codec.py``), not here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from batchserve.errors import InvalidInput, RowError, UnsupportedMediaType

if TYPE_CHECKING:
    from batchserve.config import ModelConfig
    from batchserve.metrics import ModelMetrics

Row = TypeVar("Row")
"""What ``preprocess`` makes of one item, and ``predict_batch`` takes a list of."""
Output = TypeVar("Output")
"""What ``predict_batch`` answers for one row: JSON-serialisable."""


class LoadError(Exception):
    """The model could not be loaded; the message is shown in ``/models`` and ``/readyz``."""


def cause(exc: BaseException) -> str:
    """What a load error quotes of the exception behind it: its message, or its type where the
    message is empty (joblib's ``EOFError()`` on a truncated file), never nothing."""
    return str(exc) or type(exc).__name__


class NoOptions(BaseModel):
    """A backend without options accepts an empty ``options`` table only."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC, Generic[Row, Output]):
    """Base class of every backend; subclasses are found by short name or entry point."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    """Pydantic model validating ``options`` in ``models.toml`` (``extra="forbid"``)."""

    loads_pickles: ClassVar[bool] = False
    """True when ``load`` unpickles (joblib): such artifacts load only from inside the repository."""

    input_kind: ClassVar[str] = "json"
    """What an item is, for the planner's sample inputs and ``GET /models/{name}``: ``"image"``
    (image files, or ``{"b64": ...}``), ``"text"`` (strings, or ``{"text": ...}``), ``"rows"``
    (arrays of numbers, or objects of named features), or ``"json"`` (JSON items of the backend's
    own shape)."""

    preprocess_in_thread: ClassVar[bool] = False
    """True when ``preprocess`` is heavy (image decoding): it then runs off the event loop, a
    bounded number of requests at a time (``preprocess_concurrency`` in ``models.toml``)."""

    predict_on_loop_when_cheap: ClassVar[bool] = False
    """True when ``predict_batch`` never blocks and keeps no per-thread state: then a batch measured
    to take under ~0.2 ms (``batchserve/load.py``) runs on the event loop itself, saving the hop to
    the model's thread and back, which costs more than that (one instance only; a batch that
    holds the loop over 1 ms stops it for the model)."""

    def __init__(self, config: ModelConfig, metrics: ModelMetrics | None = None) -> None:
        self.config = config
        self.options: Any = self.Options.model_validate(config.options)
        self.metrics = metrics
        """The model's metrics, for backends that report more (e.g. padding); thread-safe."""

    @abstractmethod
    def load(self, device: str) -> None:
        """Load the artifact at ``self.config.path`` onto ``device``; raise ``LoadError``."""

    @abstractmethod
    def warmup(self) -> None:
        """Run representative batches so the first request pays no one-time costs."""

    def parse_parameters(self, parameters: Mapping[str, Any]) -> Any:
        """Validate the request's ``parameters``; the result is passed to ``preprocess``.
        Raise ``InvalidInput`` for anything a client may send wrong."""
        if parameters:
            raise InvalidInput(
                f"unknown parameters {sorted(parameters)}; this model takes no parameters")
        return None

    @abstractmethod
    def preprocess(self, item: Any, parameters: Any) -> Row:
        """Validate one item and turn it into a row; raise ``InvalidInput`` saying why."""

    def check_items(self, items: list[Any], parameters: Any) -> list[Any]:
        """Check a request's items together before any is preprocessed (a budget summed over
        them, say) and return them as ``preprocess`` is to take them; runs where ``preprocess``
        runs. Raise ``InvalidInput`` naming the item (``"item 3: ..."``)."""
        return items

    @abstractmethod
    def predict_batch(self, rows: list[Row]) -> Sequence[Output | RowError]:
        """One output per row, in order; a ``RowError`` for a row that alone failed."""

    def decode_body(self, content_type: str, body: bytes) -> list[Any]:
        """Turn a non-JSON request body (an image upload, say) into items; ``content_type`` is the
        header as sent, parameters included. Runs on a worker thread."""
        raise UnsupportedMediaType(
            f"model '{self.config.name}' accepts application/json bodies only, not {content_type!r}"
        )

    def unload(self) -> None:  # optional hook: nothing to release by default
        """Release what ``load`` took (device memory, file handles)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What an input item and an output look like, for ``GET /models/{name}``."""
