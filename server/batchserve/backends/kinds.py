"""The kinds of model the protocol adapters know, declared by the backend: the v2 codecs
(``batchserve/v2/codec.py``) and the OpenAI-compatible API (``batchserve/openai_api.py``).

A backend is of a kind by having the kind's methods, as it has the planner's capabilities
(``backends/capabilities.py``): the adapters ask ``issubclass(type(backend), SentenceEmbedder)``,
never which class the backend is, nor its name. A third-party backend gets a kind's v2 tensors
(and, for ``SentenceEmbedder``, ``/v1/embeddings``) by implementing its methods, without
subclassing a built-in backend; a backend of no kind gets the generic codec. The members are
methods, not properties: asking is then a check of the class (which ``issubclass`` caches: a
request asks), and never runs a backend's code (an unloaded model's attributes may not exist yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class FeatureRows(Protocol):
    """A model of numeric features (sklearn, xgboost, lightgbm): an item is a list of
    ``feature_count()`` numbers; an output is the row's prediction (a number, or a label), or, when
    ``class_labels()`` is not ``None``, a classifier's ``{"label": label, "scores": {label:
    probability}}`` with the scores in the order of ``class_labels()``."""

    def feature_count(self) -> int:
        """Numbers per row (0 until loaded)."""
        ...

    def class_labels(self) -> list[Any] | None:
        """The classes every output scores, in order, when the outputs are a classifier's label and
        scores; ``None`` when they are predictions."""
        ...

    def outputs_per_row(self) -> int:
        """Numbers in one row's prediction: 1 for a single number, or when the model does not say."""
        ...


@runtime_checkable
class ImageClassifier(Protocol):
    """An image classifier (resnet50): an item is an image's bytes, or the image base64-encoded
    as text; an output is its top classes, best first, each ``{"label", "index", "probability"}``."""

    def default_top_k(self) -> int:
        """Classes in each output unless the request's ``parameters.top_k`` asks for another count."""
        ...


@runtime_checkable
class TextClassifier(Protocol):
    """A text classifier (transformer): an item is a text; an output is
    ``{"label": label, "scores": {label: probability}}`` over every one of ``text_labels()``."""

    def text_labels(self) -> list[str]:
        """The labels every output scores, in order (empty until loaded)."""
        ...


class Embedding(list[float]):
    """One item's vector: serialised as a plain JSON array; ``tokens`` is how many tokens the item
    took (special tokens included, after truncation), for usage counts."""

    __slots__ = ("tokens",)

    def __init__(self, values: list[float], tokens: int) -> None:
        super().__init__(values)
        self.tokens = tokens


@runtime_checkable
class SentenceEmbedder(Protocol):
    """A sentence embedding model (embedding): an item is a text or ``{"tokens": [ids]}`` (the
    model's own token ids); the request's parameters may hold ``{"dimensions": n}``, the size the
    client wants; an output is the item's vector, an ``Embedding`` (a plain list counts no tokens)."""

    def vector_size(self) -> int:
        """Values per vector at full size (0 until loaded)."""
        ...



class TensorDeclaration(Protocol):
    """One tensor of a graph: ``name``, ``datatype`` (the Open Inference Protocol's: ``FP32``...)
    and ``shape``, every axis after the batch axis (``None`` where any size is taken)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> tuple[int | None, ...]: ...


@runtime_checkable
class GraphTensors(Protocol):
    """A model that declares its own tensors (an ONNX graph): an item is one row, the one input's
    value (a nested list, without the batch axis) or an object of the inputs by name; an output
    is the one output's row, or an object of every output's row by name."""

    def graph_tensors(self) -> tuple[Sequence[TensorDeclaration], Sequence[TensorDeclaration]]:
        """The inputs and the outputs, in the graph's order (empty until loaded)."""
        ...
