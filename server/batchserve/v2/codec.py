"""Open Inference Protocol (v2) codecs: a backend's items and outputs as v2 tensors.

The tensor codec lives beside the protocol, not in the backends (which know nothing of v2):
one codec per backend kind, found along the backend class's MRO, so a subclass of a built-in
backend gets its codec, and any other backend the generic one. ``register`` adds more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import numpy as np
import orjson

from batchserve.backends.base import Backend
from batchserve.backends.embedding import EmbeddingBackend
from batchserve.backends.resnet50 import ResNet50Backend
from batchserve.backends.sklearn import SklearnBackend
from batchserve.backends.transformer import TransformerBackend
from batchserve.backends.trees import TreeBackend
from batchserve.errors import InvalidInput
from batchserve.v2.tensors import Tensor, bytes_tensor, numeric_datatype

B = TypeVar("B", bound=Backend[Any, Any])
Metadata = dict[str, list[dict[str, Any]]]

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8")  # raw JPEG, PNG, GIF (refused later)


class Codec(Generic[B]):
    """The generic codec, for any backend: one input tensor whose slices along the first axis
    are the items (numbers as lists, BYTES as UTF-8 text), and one BYTES output ``output``
    holding each row's output as JSON text."""

    def metadata(self, backend: B) -> Metadata:
        """Input and output tensors (name, datatype, shape with -1 for the batch axis)."""
        return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}]}

    def items(self, backend: B, inputs: Mapping[str, Tensor]) -> list[Any]:
        """Items from the request's tensors; the backend's ``preprocess`` validates them."""
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


class SklearnCodec(Codec[SklearnBackend]):
    """FP64 features in; the prediction (FP64, or BYTES labels) out, or with ``proba`` the
    label and the class probabilities."""

    def metadata(self, backend: SklearnBackend) -> Metadata:
        inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, backend.n_features]}]
        classes = backend.classes
        if classes is not None:
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes)]}]
        else:
            outputs = [{"name": "output", "datatype": "FP64", "shape": [-1]}]
        return {"inputs": inputs, "outputs": outputs}

    def outputs(self, backend: SklearnBackend, outputs: list[Any]) -> list[Tensor]:
        if backend.classes is not None:
            labels = [str(o["label"]) for o in outputs]
            probabilities = np.array([list(o["scores"].values()) for o in outputs], dtype=np.float64)
            return [bytes_tensor("label", labels, (len(outputs),)),
                    Tensor("probabilities", "FP64", probabilities)]
        array = np.asarray(outputs)
        if array.dtype.kind in "fiub":
            array = array.astype(np.float64) if array.dtype.kind == "f" else array
            return [Tensor("output", numeric_datatype(array), array)]
        return [bytes_tensor("output", [str(o) for o in outputs], array.shape)]


class TreesCodec(Codec[TreeBackend]):
    """FP64 (or FP32) features in, NaN for a missing value; the prediction out (FP64 ``[-1]``,
    or ``[-1, outputs]``), or for a classifier the label and the class probabilities."""

    def metadata(self, backend: TreeBackend) -> Metadata:
        inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, backend.n_features]}]
        labels = backend.labels
        if labels is not None:
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(labels)]}]
        else:
            shape = [-1] if backend.n_outputs == 1 else [-1, backend.n_outputs]
            outputs = [{"name": "output", "datatype": "FP64", "shape": shape}]
        return {"inputs": inputs, "outputs": outputs}

    def outputs(self, backend: TreeBackend, outputs: list[Any]) -> list[Tensor]:
        if backend.labels is not None:
            probabilities = np.array([list(o["scores"].values()) for o in outputs], dtype=np.float64)
            return [bytes_tensor("label", [str(o["label"]) for o in outputs], (len(outputs),)),
                    Tensor("probabilities", "FP64", probabilities)]
        return [Tensor("output", "FP64", np.asarray(outputs, dtype=np.float64))]


class ResNet50Codec(Codec[ResNet50Backend]):
    """BYTES images in (raw, through the binary extension, or base64 text in JSON); the top-k
    labels, class indices and probabilities out."""

    def metadata(self, backend: ResNet50Backend) -> Metadata:
        k = backend.options.top_k
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                            {"name": "indices", "datatype": "INT64", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}]}

    def items(self, backend: ResNet50Backend, inputs: Mapping[str, Tensor]) -> list[Any]:
        if set(inputs) != {"image"} or inputs["image"].datatype != "BYTES":
            raise InvalidInput("this model takes one BYTES input tensor named 'image'")
        return [e if e.startswith(_IMAGE_MAGIC) or e[8:12] == b"WEBP" else e.decode("latin-1")
                for e in inputs["image"].array.reshape(-1).tolist()]

    def outputs(self, backend: ResNet50Backend, outputs: list[Any]) -> list[Tensor]:
        shape = (len(outputs), len(outputs[0]))
        return [
            bytes_tensor("labels", [c["label"] for o in outputs for c in o], shape),
            Tensor("indices", "INT64", np.array([[c["index"] for c in o] for o in outputs],
                                                dtype=np.int64)),
            Tensor("probabilities", "FP32", np.array([[c["probability"] for c in o] for o in outputs],
                                                     dtype=np.float32)),
        ]


class TransformerCodec(Codec[TransformerBackend]):
    """BYTES texts in (the generic items); the label and every label's probability out."""

    def metadata(self, backend: TransformerBackend) -> Metadata:
        labels = len(backend.labels) or -1
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, labels]}]}

    def outputs(self, backend: TransformerBackend, outputs: list[Any]) -> list[Tensor]:
        names = backend.labels
        probabilities = np.array([[o["scores"][label] for label in names] for o in outputs],
                                 dtype=np.float32)
        return [bytes_tensor("label", [o["label"] for o in outputs], (len(outputs),)),
                Tensor("probabilities", "FP32", probabilities)]


class EmbeddingCodec(Codec[EmbeddingBackend]):
    """BYTES texts in (the generic items); each text's vector out, ``embedding`` FP32
    ``[-1, size]`` (``size``: ``parameters.dimensions`` when the request asks for fewer)."""

    def metadata(self, backend: EmbeddingBackend) -> Metadata:
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, backend.size or -1]}]}

    def outputs(self, backend: EmbeddingBackend, outputs: list[Any]) -> list[Tensor]:
        return [Tensor("embedding", "FP32", np.array(outputs, dtype=np.float32))]


_GENERIC: Codec[Any] = Codec()
_CODECS: dict[type[Backend[Any, Any]], Codec[Any]] = {
    SklearnBackend: SklearnCodec(),
    ResNet50Backend: ResNet50Codec(),
    TransformerBackend: TransformerCodec(),
    EmbeddingBackend: EmbeddingCodec(),
    TreeBackend: TreesCodec(),  # type: ignore[type-abstract]  # the base of xgboost and lightgbm
}


def register(backend: type[B], codec: Codec[B]) -> None:
    """Serve ``backend`` (and its subclasses) over v2 with ``codec``."""
    _CODECS[backend] = codec


def codec_for(backend: Backend[Any, Any]) -> Codec[Any]:
    """The codec registered for the nearest class in ``backend``'s MRO, else the generic one."""
    for cls in type(backend).__mro__:
        codec = _CODECS.get(cls)
        if codec is not None:
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
