"""torchvision's ResNet50 image classifier.

An item is a base64 string of a JPEG, PNG or WebP image (``{"b64": ...}`` and
data URLs too); ``POST /predict/{model}`` also takes the raw image as the body
(``Content-Type: image/*``) or ``multipart/form-data`` with one or more files.
Each image is decoded and given the standard ImageNet eval transform (RGB,
resize 256, center crop 224, normalize); a large JPEG is decoded at a reduced
DCT scale that still leaves its short side >= 256 (``options.decode``).
On the CPU path, decoding, resizing and cropping run on a worker thread, off
the event loop and alongside inference of the previous batch, in PIL alone (no
torch ops, so request threads don't each start a torch thread pool); the crop
travels as 8-bit pixels and is normalized per batch on the model's device, the
same arithmetic as torchvision's ToTensor + Normalize. On a GPU
(``options.decode_on``), a JPEG travels as its bytes once its header is
checked and is decoded, resized and cropped with its batch on the device
(``backends/device_decode.py``).
The output per item is the top-k classes with ImageNet labels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import Field

from batchserve.backends import images, sized_samples
from batchserve.backends.base import Backend, LoadError
from batchserve.backends.capabilities import InputSizes, Samples
from batchserve.backends.device_decode import (
    BatchInputs,
    Jpeg,
    goes_to_device,
)
from batchserve.backends.images import ImageOptions
from batchserve.backends.torch_common import (
    TorchModelParts,
    TorchOptions,
    load_state_dict,
    resolve_device,
    resolve_dtype,
    set_threads,
    warmup_sizes,
    weights_note,
)
from batchserve.errors import RowError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from batchserve.config import ModelConfig
    from batchserve.metrics import ModelMetrics

log = logging.getLogger(__name__)

_PRETRAINED = ("IMAGENET1K_V1", "IMAGENET1K_V2")


class ResNet50Options(TorchOptions, ImageOptions):
    weights: str = "file"
    """``file``: the state_dict at ``path`` (.safetensors, or .pt/.pth read weights-only);
    ``IMAGENET1K_V1``/``IMAGENET1K_V2``: torchvision's download and cache; ``random``: demo only."""
    decode_on: Literal["auto", "cpu", "device"] = "auto"
    """Where JPEGs are decoded. ``cpu``: by Pillow on the request threads (``decode``), the crop
    sent to the model. ``device``: the JPEG's bytes travel to the batch (once its header passes
    the checks above) and the batch's JPEGs are decoded together on the model's device (nvJPEG on
    a GPU), resized and cropped there at full resolution; PNG, WebP, CMYK JPEGs and any JPEG the
    device refuses take the CPU path, that row alone. On a CPU model ``device`` decodes with
    torchvision in the batch's thread: for tests, slower than ``cpu``. ``auto``: ``device`` on
    CUDA, ``cpu`` otherwise."""
    device_decode_pixels: int = Field(default=64_000_000, ge=1)
    """The most header pixels of one device decode call (3 bytes a pixel of device memory held at
    once); a batch with more is decoded in several calls, an image larger than this alone."""


Classes: TypeAlias = list[dict[str, Any]]
"""The top-k classes of one image, most likely first: ``{"label", "index", "probability"}``."""


@dataclass(frozen=True, slots=True)
class ImageRow:
    image: torch.Tensor | Jpeg  # the CPU path's crop (224 x 224 x 3 uint8, as PIL gives it),
    top_k: int  # or a JPEG decoded with its batch on the device


class ResNet50Backend(TorchModelParts, Backend[ImageRow, Classes]):
    Options = ResNet50Options
    input_kind = "image"
    preprocess_in_thread = True  # JPEG decode + resize: ~5 ms per image

    def __init__(self, config: ModelConfig, metrics: ModelMetrics | None = None) -> None:
        super().__init__(config, metrics)
        self._model: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._transform: Any = None
        self._inputs: BatchInputs | None = None
        self._on_device = False
        self._categories: list[str] = []
        self.weights_note = "not loaded"

    # -- loading -------------------------------------------------------------------------

    def load(self, device: str) -> None:
        import torch
        from torchvision import transforms
        from torchvision.models import ResNet50_Weights, resnet50

        self._device = resolve_device(device)
        self._dtype = resolve_dtype(self.options.dtype, self._device)
        set_threads(self.options, self._device, self.config.instances)
        model = resnet50(weights=None)
        weights = self.options.weights
        if weights == "file":
            model.load_state_dict(load_state_dict(self.config.path))
            self.weights_note = weights_note(self.config.path)
        elif weights in _PRETRAINED:
            model.load_state_dict(_pretrained_state(weights))
            self.weights_note = f"torchvision ResNet50_Weights.{weights}"
        elif weights == "random":
            log.warning("model %s: resnet50 with RANDOM weights (demo only); its labels mean "
                        "nothing", self.config.name)
            self.weights_note = "random (demo only: predictions are meaningless)"
        else:
            raise LoadError(f"options.weights must be 'file', 'random', 'IMAGENET1K_V1' or "
                            f"'IMAGENET1K_V2', not {weights!r}")
        self._model = model.eval().to(self._device, self._dtype, memory_format=torch.channels_last)
        self._categories = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
        self._transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
        decode_on = self.options.decode_on
        self._on_device = decode_on == "device" or (decode_on == "auto" and self._device.type == "cuda")
        self._inputs = BatchInputs(self._device, self._dtype, cpu_crop=self._crop_bytes,
                                   max_pixels_per_call=self.options.device_decode_pixels)
        if self._device.type == "cuda":  # the weights' copies done before other streams read them
            torch.cuda.synchronize(self._device)

    def warmup(self) -> None:
        import torch

        row = ImageRow(torch.zeros(224, 224, 3, dtype=torch.uint8), 1)
        if self._on_device:  # and the device's decoder (nvJPEG's first call sets it up)
            row = self.preprocess(images.black_jpeg(), 1)
        for size in warmup_sizes(self.config.max_batch_size):
            self.predict_batch([row] * size)

    def unload(self) -> None:
        on_cuda = self._device is not None and self._device.type == "cuda"
        self._model = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    # -- requests ------------------------------------------------------------------------

    def parse_parameters(self, parameters: Mapping[str, Any]) -> int:
        return images.parse_top_k(parameters, self.options.top_k, len(self._categories))

    def decode_body(self, content_type: str, body: bytes) -> list[Any]:
        return images.decode_body(self.config.name, content_type, body)

    def check_items(self, items: list[Any], parameters: Any) -> list[Any]:
        return images.check_images(items, self.options)

    def preprocess(self, item: Any, parameters: Any) -> ImageRow:
        data = images.image_bytes(item)
        with images.open_image(data, self.options.max_pixels) as image:
            if self._on_device and goes_to_device(image.format, image.mode, data):
                width, height = image.size
                return ImageRow(Jpeg(data, width * height), parameters)
            return ImageRow(self._crop(image), parameters)

    def _crop_bytes(self, data: bytes) -> torch.Tensor:
        """The CPU path for an image the device's decoder refused (in the batch's thread)."""
        with images.open_image(data, self.options.max_pixels) as image:
            return self._crop(image)

    def _crop(self, image: Image.Image) -> torch.Tensor:
        """The CPU path: decode (``options.decode``), resize, center crop; 224 x 224 x 3 uint8."""
        import torch

        return torch.from_numpy(images.crop(image, self.options.decode))

    def predict_batch(self, rows: list[ImageRow]) -> list[Classes | RowError]:
        import torch

        assert self._inputs is not None, "predict_batch before load"
        values: list[list[float]] = []
        indices: list[list[int]] = []
        with torch.inference_mode(), self._inputs.stream():
            prepared = self._inputs.prepare([row.image for row in rows])
            kept = [row for n, row in enumerate(rows) if n not in prepared.failures]
            if prepared.batch is not None:
                probabilities = self._model(prepared.batch).float().softmax(dim=1)
                top = probabilities.topk(max(row.top_k for row in kept), dim=1)
                values, indices = top.values.cpu().tolist(), top.indices.cpu().tolist()
        if self.metrics is not None and self._device.type == "cuda":
            self.metrics.set_device_memory_peak(torch.cuda.max_memory_allocated(self._device))
        outputs = iter([
            [{"label": self._categories[i], "index": i, "probability": p}
             for p, i in zip(values[n][: row.top_k], indices[n][: row.top_k], strict=True)]
            for n, row in enumerate(kept)
        ])
        return [RowError(prepared.failures[n]) if n in prepared.failures else next(outputs)
                for n in range(len(rows))]

    def describe(self) -> dict[str, Any]:
        return {
            "input": {
                "type": "image: base64 string, {\"b64\": ...}, or the raw body (image/*, multipart)",
                "formats": list(images.FORMATS), "max_pixels": self.options.max_pixels,
                "max_request_pixels": self.options.max_request_pixels,
                "decode": self.options.decode,
                "decode_on": "device" if self._on_device else "cpu",
                "transform": "RGB, resize 256, center crop 224, ImageNet normalization",
            },
            "output": {"type": "top-k list of {label, index, probability}",
                       "top_k": self.options.top_k, "labels": "ImageNet-1k (torchvision)"},
            "weights": self.weights_note,
            "parameters": {"top_k": "integer, 1 to 1000"},
        }

    def default_top_k(self) -> int:  # its kind: backends/kinds.py's ImageClassifier
        top_k: int = self.options.top_k
        return top_k

    # -- capabilities for the planner (backends/capabilities.py) ---------------------------------

    def sample_items(self) -> Samples:
        return images.sample_photo()

    def input_sizes(self) -> InputSizes:
        return InputSizes("image", "px", list(sized_samples.IMAGE_SIDES))

    def sized_items(self, size: int) -> Samples:
        return sized_samples.photos(size)


def _pretrained_state(name: str) -> dict[str, Any]:
    """torchvision's pretrained weights: from its cache, or downloaded where the network allows."""
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights[name]
    try:
        state: dict[str, Any] = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise LoadError(
            f"cannot get ResNet50_Weights.{name} ({type(exc).__name__}: {exc}). Offline? Download "
            f"{weights.url} where the network allows, then set path to the file and "
            "options.weights = 'file'") from None
    return state
