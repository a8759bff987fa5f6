"""An image classifier's ONNX graph served by ONNX Runtime (``backend = "onnx-image"``): the
resnet50 backend's items, checks and preprocessing (``backends/images.py``) before a graph.

``path`` is a ``.onnx`` file (or a folder holding ``model.onnx``) of one FP32 input
``[batch, 3, 224, 224]``, ImageNet-normalised RGB (the layout torchvision's models take, as
``batchserve export resnet50 --to onnx`` writes it), and one output ``[batch, classes]`` of
logits. The class names come from the graph's metadata property ``labels`` (a JSON list, which
the export writes), else ``class N``. Each image is decoded, resized and cropped in Pillow on a
request thread; the batch is normalised in numpy and run; the output is the top-k classes with
their softmax probabilities, as the resnet50 backend answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from batchserve.backends import images, sized_samples
from batchserve.backends.base import Backend, LoadError
from batchserve.backends.capabilities import InputSizes, Samples
from batchserve.backends.onnx_session import Graph, SessionOptions, open_session
from batchserve.backends.torch_common import warmup_sizes

Classes: TypeAlias = list[dict[str, Any]]
ImageRow: TypeAlias = tuple[np.ndarray[Any, Any], int]
"""An image's 224 x 224 x 3 uint8 crop, and its request's top_k."""
_SHAPE = (3, images.CROP_SIDE, images.CROP_SIDE)
_MEAN = np.array(images.IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1) * 255
_STD = np.array(images.IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1) * 255


class OnnxImageOptions(SessionOptions, images.ImageOptions):
    """The onnx-image backend's options: the session's and the image checks'."""


class OnnxImageBackend(Backend[ImageRow, Classes]):
    Options = OnnxImageOptions
    input_kind = "image"
    preprocess_in_thread = True  # JPEG decode + resize: ~5 ms per image

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._graph: Graph | None = None
        self._labels: list[str] = []

    def load(self, device: str) -> None:
        graph = open_session(self.config, self.options, device)
        shapes = [(spec.dtype, spec.shape) for spec in graph.inputs]
        if shapes != [("float32", _SHAPE)] or len(graph.outputs) != 1 \
                or len(graph.outputs[0].shape) != 1 or graph.outputs[0].shape[0] is None:
            raise LoadError(
                f"{self.config.path}: the graph's tensors ({_tensors(graph)}) do not match the "
                "onnx-image preset: one FP32 input [batch, 3, 224, 224] (normalised RGB) and one "
                "output [batch, classes]; serve other graphs with backend = \"onnx\"")
        classes = graph.outputs[0].shape[0]
        self._labels = _labels(graph.metadata.get("labels"), classes)
        self._graph = graph

    def warmup(self) -> None:
        row = (np.zeros((images.CROP_SIDE, images.CROP_SIDE, 3), dtype=np.uint8), 1)
        for size in warmup_sizes(self.config.max_batch_size):
            self.predict_batch([row] * size)

    def unload(self) -> None:
        self._graph = None

    def parse_parameters(self, parameters: Mapping[str, Any]) -> int:
        return images.parse_top_k(parameters, self.options.top_k, len(self._labels))

    def decode_body(self, content_type: str, body: bytes) -> list[Any]:
        return images.decode_body(self.config.name, content_type, body)

    def check_items(self, items: list[Any], parameters: Any) -> list[Any]:
        return images.check_images(items, self.options)

    def preprocess(self, item: Any, parameters: Any) -> ImageRow:
        with images.open_image(images.image_bytes(item), self.options.max_pixels) as image:
            return images.crop(image, self.options.decode), parameters

    def predict_batch(self, rows: list[ImageRow]) -> list[Classes]:
        assert self._graph is not None, "predict_batch before load"
        pixels = np.stack([row[0] for row in rows]).transpose(0, 3, 1, 2).astype(np.float32)
        batch = (pixels - _MEAN) / _STD  # ToTensor + Normalize's arithmetic, in 0-255 units
        feed = {self._graph.inputs[0].name: np.ascontiguousarray(batch)}
        probabilities = softmax(self._graph.session.run(None, feed)[0])
        outputs = []
        for scores, (_, top_k) in zip(probabilities, rows, strict=True):
            best = np.argsort(-scores, kind="stable")[:top_k]
            outputs.append([{"label": self._labels[i], "index": int(i), "probability": float(scores[i])}
                            for i in best])
        return outputs

    def describe(self) -> dict[str, Any]:
        return {
            "input": {"type": "image: base64 string, {\"b64\": ...}, or the raw body (image/*, multipart)",
                      "formats": list(images.FORMATS), "max_pixels": self.options.max_pixels,
                      "max_request_pixels": self.options.max_request_pixels,
                      "decode": self.options.decode,
                      "transform": "RGB, resize 256, center crop 224, ImageNet normalization"},
            "output": {"type": "top-k list of {label, index, probability}", "top_k": self.options.top_k},
            "runtime": f"onnxruntime ({self._graph.provider})" if self._graph else "onnxruntime",
            "parameters": {"top_k": f"integer, 1 to {len(self._labels) or 'the classes'}"},
        }

    def default_top_k(self) -> int:  # its kind: backends/kinds.py's ImageClassifier
        top_k: int = self.options.top_k
        return top_k

    # -- capabilities for the planner (backends/capabilities.py) ---------------------------------

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def sample_items(self) -> Samples:
        return images.sample_photo()

    def input_sizes(self) -> InputSizes:
        return InputSizes("image", "px", list(sized_samples.IMAGE_SIDES))

    def sized_items(self, size: int) -> Samples:
        return sized_samples.photos(size)


def softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Softmax over the last axis, in float32 (as the torch backends compute it)."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray[Any, Any] = exp / exp.sum(axis=-1, keepdims=True)
    return result


def _tensors(graph: Graph) -> str:
    def one(spec: Any) -> str:
        return f"{spec.name} {spec.datatype} {[-1, *(a if a is not None else -1 for a in spec.shape)]}"

    return "inputs " + ", ".join(map(one, graph.inputs)) + "; outputs " + ", ".join(map(one, graph.outputs))


def _labels(note: str | None, classes: int) -> list[str]:
    """Class names from the graph's ``labels`` metadata (a JSON list of ``classes`` strings)."""
    if note is None:
        return [f"class {index}" for index in range(classes)]
    try:
        labels = json.loads(note)
    except ValueError:
        labels = None
    if not (isinstance(labels, list) and len(labels) == classes and all(isinstance(x, str) for x in labels)):
        raise LoadError(f"the graph's metadata 'labels' is not a JSON list of {classes} names "
                        "(one per class of its output)")
    return labels
