"""The backend contract: what a model must provide to be served by batchserve.

A backend is constructed with its model's configuration, then ``load`` and
``warmup`` run on a worker thread before the model reports ready. For each
request, ``parse_parameters``, ``check_items`` (the items together) and
``preprocess`` (each item) turn the client's JSON into rows; rows from many
requests are batched and handed to ``predict_batch`` on an executor thread,
which must return exactly one output per row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from batchserve.errors import InvalidInput, UnsupportedMediaType

if TYPE_CHECKING:
    from batchserve.config import ModelConfig
    from batchserve.metrics import ModelMetrics
    from batchserve.v2.tensors import Tensor


class LoadError(Exception):
    """The model could not be loaded; the message is shown in ``/models`` and ``/readyz``."""


class NoOptions(BaseModel):
    """A backend without options accepts an empty ``options`` table only."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC):
    """Base class of every backend; subclasses are found by short name or entry point."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    """Pydantic model validating ``options`` in ``models.toml`` (``extra="forbid"``)."""

    loads_pickles: ClassVar[bool] = False
    """True when ``load`` unpickles (joblib): such artifacts load only from inside the repository."""

    preprocess_in_thread: ClassVar[bool] = False
    """True when ``preprocess`` is heavy (image decoding): it then runs off the event loop."""

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
        """Validate the request's ``parameters``; the result is passed to ``preprocess``."""
        if parameters:
            raise InvalidInput(
                f"unknown parameters {sorted(parameters)}; this model takes no parameters")
        return None

    @abstractmethod
    def preprocess(self, item: Any, parameters: Any) -> Any:
        """Validate one JSON item and turn it into a row; raise ``InvalidInput`` saying why."""

    def check_items(self, items: list[Any], parameters: Any) -> list[Any]:
        """Check a request's items together before any is preprocessed (a budget summed over
        them, say) and return them as ``preprocess`` is to take them; runs where ``preprocess``
        runs. Raise ``InvalidInput`` naming the item (``"item 3: ..."``)."""
        return items

    @abstractmethod
    def predict_batch(self, rows: list[Any]) -> Sequence[Any]:
        """Return one JSON-serialisable output per row, in order."""

    def decode_body(self, content_type: str, body: bytes) -> list[Any]:
        """Turn a non-JSON request body (an image upload, say) into items; ``content_type`` is the
        header as sent, parameters included. Runs on a worker thread."""
        raise UnsupportedMediaType(
            f"model '{self.config.name}' accepts application/json bodies only, not {content_type!r}"
        )

    def unload(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what ``load`` took (device memory, file handles)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What an input item and an output look like, for ``GET /models/{name}``."""

    # -- Open Inference Protocol (v2); the defaults serve any backend, generically ----------

    def v2_metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Input and output tensors (name, datatype, shape with -1 for the batch axis)."""
        return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}]}

    def items_from_v2(self, inputs: Mapping[str, Tensor]) -> list[Any]:
        """Items from the request's tensors: by default one tensor, each slice along its first
        axis an item (numbers as lists, BYTES as UTF-8 text); ``preprocess`` validates them."""
        if len(inputs) != 1:
            raise InvalidInput(f"this model takes one input tensor, got {sorted(inputs)}")
        tensor = next(iter(inputs.values()))
        if tensor.datatype != "BYTES":
            items: list[Any] = tensor.array.tolist()
            return items
        return [_text(element, index) for index, element in enumerate(tensor.array.tolist())]

    def outputs_to_v2(self, outputs: list[Any]) -> list[Tensor]:
        """Output tensors: by default ``output``, BYTES, each row's output as JSON text."""
        import orjson

        from batchserve.v2.tensors import bytes_tensor

        return [bytes_tensor("output", [orjson.dumps(o) for o in outputs], (len(outputs),))]


def _text(element: Any, index: int) -> Any:
    """A BYTES element as text (nested lists element-wise); invalid UTF-8 is the client's error."""
    if isinstance(element, list):
        return [_text(e, index) for e in element]
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"item {index}: BYTES element is not valid UTF-8") from None
