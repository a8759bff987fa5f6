"""Open Inference Protocol (v2) codecs: a backend's items and outputs as v2 tensors.

The tensor codec lives beside the protocol, not in the backends (which know nothing of v2):
one codec per kind of model a backend declares (``backends/kinds.py``), asked in a fixed order
(``FeatureRows``, ``ImageClassifier``, ``TextClassifier``, ``SentenceEmbedder``); any other backend
gets the generic one. A backend's kind, never its class, picks the codec, so a third-party
backend that implements a kind's methods gets its tensors. ``register`` adds a codec for a
plugin's own kind (a runtime-checkable protocol, or a class).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import numpy as np
import orjson

from batchserve.backends.kinds import (
    FeatureRows,
    GraphTensors,
    ImageClassifier,
    SentenceEmbedder,
    TensorDeclaration,
    TextClassifier,
)
from batchserve.errors import InvalidInput
from batchserve.v2.tensors import NUMPY_TYPES, Tensor, bytes_tensor, numeric_datatype

B = TypeVar("B")
Metadata = dict[str, list[dict[str, Any]]]

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8")  # raw JPEG, PNG, GIF (refused later)


class Codec(Generic[B]):
    """The generic codec, for any backend: one input tensor ``input`` whose slices along the
    first axis are the items (numbers as lists, BYTES as UTF-8 text), and one BYTES output
    ``output`` holding each row's output as JSON text."""

    inputs: tuple[str, ...] | None = None
    """The input tensors' names (``input_names``); ``None``: those ``metadata`` declares (a
    plugin's codec that declares its own there needs nothing else)."""

    def metadata(self, backend: B) -> Metadata:
        """Input and output tensors (name, datatype, shape with -1 for the batch axis)."""
        return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}]}

    def input_names(self, backend: B) -> tuple[str, ...]:
        """The input tensors a request must send, by name: these and no others (``check_names``):
        ``inputs``, or, where a subclass sets it to ``None``, those ``metadata`` declares."""
        if self.inputs is not None:
            return self.inputs
        return tuple(str(tensor["name"]) for tensor in self.metadata(backend)["inputs"])

    def check_names(self, backend: B, inputs: Mapping[str, Tensor]) -> None:
        """Refuse (400) a request whose input tensors are not the model's, naming the expected."""
        expected = self.input_names(backend)
        if len(inputs) != len(expected) or any(name not in inputs for name in expected):
            raise InvalidInput(f"input tensors {sorted(inputs)} are not the model's: it takes "
                               f"{sorted(expected)}")

    def items(self, backend: B, inputs: Mapping[str, Tensor]) -> list[Any]:
        """Items from the request's tensors (``check_names`` passed); the backend's ``preprocess``
        validates them."""
        if len(inputs) != 1:
            raise InvalidInput(f"this model takes one input tensor, got {sorted(inputs)}")
        tensor = next(iter(inputs.values()))
        if tensor.datatype != "BYTES":
            items: list[Any] = tensor.array.tolist()
            return items
        return [_text(element, index) for index, element in enumerate(tensor.array.tolist())]

    def outputs(self, backend: B, outputs: list[Any]) -> list[Tensor]:
        """Output tensors, one row per output."""
        return [bytes_tensor("output", [orjson.dumps(o) for o in outputs], (len(outputs),))]


class FeatureRowsCodec(Codec[FeatureRows]):
    """FP64 (or FP32) features in, NaN for a missing value where the model takes one; the
    prediction out (FP64 ``[-1]``, ``[-1, outputs]`` for several; INT64 or BYTES labels as the
    model predicts them), or for a classifier the label and the class probabilities."""

    inputs = ("input",)

    def metadata(self, backend: FeatureRows) -> Metadata:
        inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, backend.feature_count()]}]
        labels = backend.class_labels()
        if labels is not None:
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(labels)]}]
        else:
            n = backend.outputs_per_row()
            outputs = [{"name": "output", "datatype": "FP64", "shape": [-1] if n == 1 else [-1, n]}]
        return {"inputs": inputs, "outputs": outputs}

    def outputs(self, backend: FeatureRows, outputs: list[Any]) -> list[Tensor]:
        if backend.class_labels() is not None:
            probabilities = np.array([list(o["scores"].values()) for o in outputs], dtype=np.float64)
            return [bytes_tensor("label", [str(o["label"]) for o in outputs], (len(outputs),)),
                    Tensor("probabilities", "FP64", probabilities)]
        array = np.asarray(outputs)
        if array.dtype.kind in "fiub":
            array = array.astype(np.float64) if array.dtype.kind == "f" else array
            return [Tensor("output", numeric_datatype(array), array)]
        return [bytes_tensor("output", [str(o) for o in outputs], array.shape)]


class ImageClassifierCodec(Codec[ImageClassifier]):
    """BYTES images in (raw, through the binary extension, or base64 text in JSON); the top-k
    labels, class indices and probabilities out."""

    inputs = ("image",)

    def metadata(self, backend: ImageClassifier) -> Metadata:
        k = backend.default_top_k()
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                            {"name": "indices", "datatype": "INT64", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}]}

    def items(self, backend: ImageClassifier, inputs: Mapping[str, Tensor]) -> list[Any]:
        if set(inputs) != {"image"} or inputs["image"].datatype != "BYTES":
            raise InvalidInput("this model takes one BYTES input tensor named 'image'")
        return [e if e.startswith(_IMAGE_MAGIC) or e[8:12] == b"WEBP" else e.decode("latin-1")
                for e in inputs["image"].array.reshape(-1).tolist()]

    def outputs(self, backend: ImageClassifier, outputs: list[Any]) -> list[Tensor]:
        shape = (len(outputs), len(outputs[0]))
        return [
            bytes_tensor("labels", [c["label"] for o in outputs for c in o], shape),
            Tensor("indices", "INT64", np.array([[c["index"] for c in o] for o in outputs],
                                                dtype=np.int64)),
            Tensor("probabilities", "FP32", np.array([[c["probability"] for c in o] for o in outputs],
                                                     dtype=np.float32)),
        ]


class TextClassifierCodec(Codec[TextClassifier]):
    """BYTES texts in (the generic items); the label and every label's probability out."""

    inputs = ("text",)

    def metadata(self, backend: TextClassifier) -> Metadata:
        labels = len(backend.text_labels()) or -1
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, labels]}]}

    def outputs(self, backend: TextClassifier, outputs: list[Any]) -> list[Tensor]:
        names = backend.text_labels()
        probabilities = np.array([[o["scores"][label] for label in names] for o in outputs],
                                 dtype=np.float32)
        return [bytes_tensor("label", [o["label"] for o in outputs], (len(outputs),)),
                Tensor("probabilities", "FP32", probabilities)]


class SentenceEmbedderCodec(Codec[SentenceEmbedder]):
    """BYTES texts in (the generic items); each text's vector out, ``embedding`` FP32
    ``[-1, size]`` (``size``: ``parameters.dimensions`` when the request asks for fewer)."""

    inputs = ("text",)

    def metadata(self, backend: SentenceEmbedder) -> Metadata:
        size = backend.vector_size() or -1
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, size]}]}

    def outputs(self, backend: SentenceEmbedder, outputs: list[Any]) -> list[Tensor]:
        return [Tensor("embedding", "FP32", np.array(outputs, dtype=np.float32))]


class GraphTensorsCodec(Codec[GraphTensors]):
    """The graph's own tensors, named, typed and shaped as it declares them (the batch axis -1):
    each input's slices along the first axis are the rows; each output is stacked from them."""

    inputs = None

    def metadata(self, backend: GraphTensors) -> Metadata:
        inputs, outputs = backend.graph_tensors()
        return {"inputs": [_declared(tensor) for tensor in inputs],
                "outputs": [_declared(tensor) for tensor in outputs]}

    def items(self, backend: GraphTensors, inputs: Mapping[str, Tensor]) -> list[Any]:
        declared = backend.graph_tensors()[0]
        rows = {len(inputs[tensor.name].array) for tensor in declared}
        if len(rows) != 1:
            raise InvalidInput(f"the input tensors' first axes differ ({sorted(rows)}): each is "
                               "the batch, one row per item")
        if len(declared) == 1:
            return list(inputs[declared[0].name].array)
        count = rows.pop()
        return [{tensor.name: inputs[tensor.name].array[n] for tensor in declared}
                for n in range(count)]

    def outputs(self, backend: GraphTensors, outputs: list[Any]) -> list[Tensor]:
        declared = backend.graph_tensors()[1]
        tensors = []
        for tensor in declared:
            column = ([o[tensor.name] for o in outputs] if len(declared) > 1 else outputs)
            dtype = NUMPY_TYPES[tensor.datatype]
            tensors.append(Tensor(tensor.name, tensor.datatype, np.asarray(column, dtype=dtype)))
        return tensors


def _declared(tensor: TensorDeclaration) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype,
            "shape": [-1, *(-1 if axis is None else axis for axis in tensor.shape)]}


_GENERIC: Codec[Any] = Codec()
_BUILTIN: tuple[tuple[type[Any], Codec[Any]], ...] = (
    (FeatureRows, FeatureRowsCodec()),
    (ImageClassifier, ImageClassifierCodec()),
    (TextClassifier, TextClassifierCodec()),
    (SentenceEmbedder, SentenceEmbedderCodec()),
    (GraphTensors, GraphTensorsCodec()),
)
"""Each kind's codec, in the order asked: a backend of several kinds gets the first one's."""
_CODECS: dict[type[Any], Codec[Any]] = {}
"""Codecs registered by plugins, by the kind they serve; asked before the built-in ones."""


def register(kind: type[Any], codec: Codec[Any]) -> None:
    """Serve every backend of ``kind`` with ``codec``: ``kind`` is a runtime-checkable protocol of
    methods only (a backend class is of it by having them) or a class (its subclasses too). The
    codec registered last is asked first, and any registered one before the built-in kinds."""
    _CODECS.pop(kind, None)
    _CODECS[kind] = codec


def codec_for(backend: Any) -> Codec[Any]:
    """The codec for the kind of ``backend``: a registered one, else the first built-in kind's,
    else the generic one. The kind is asked of the backend's class with ``issubclass``, which
    caches its answers (a request asks twice; ``isinstance`` on a runtime protocol takes ~20 us on
    Python 3.11 for a backend of no kind)."""
    cls = type(backend)
    for kind, codec in (*reversed(_CODECS.items()), *_BUILTIN):
        if issubclass(cls, kind):
            return codec
    return _GENERIC


def _text(element: Any, index: int) -> Any:
    """A BYTES element as text (nested lists element-wise); invalid UTF-8 is the client's error."""
    if isinstance(element, list):
        return [_text(e, index) for e in element]
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"item {index}: BYTES element is not valid UTF-8") from None
