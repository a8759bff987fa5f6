"""A batch of images made ready on the model's device: JPEGs decoded there (resnet50's
``options.decode_on``), the other rows' CPU crops copied there, all normalised together.

A row reaches ``predict_batch`` either as its CPU crop (PNG, WebP, CMYK JPEGs and every image
when decoding on the CPU: 224 x 224 x 3 uint8 pixels) or as its JPEG bytes (``Jpeg``), whose
header was checked before admission (format, ``max_pixels``, ``max_request_pixels``). The JPEGs
of a batch are gathered into one host buffer (pinned on CUDA) and decoded by one
``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on CUDA), in several calls only
when their header pixels exceed ``max_pixels_per_call``; each is then resized (short side to
``RESIZE_SIDE``, bilinear with antialiasing) and center-cropped to ``CROP_SIDE`` there: the
geometry of the CPU path, whose ``transforms.Resize(256)`` and ``CenterCrop(224)`` compute the
same sizes and offsets. A JPEG the device decoder refuses (nvJPEG lacks some of libjpeg's
coverage) goes through the CPU path for that row alone; one that fails there too fails alone,
as a ``RowError`` for its request (400), never its batch.

On CUDA each batch runs on a stream of the executor thread's own (one per model instance),
so with ``instances = 2`` the copies and decoding of one batch overlap the other's forward.
Everything but the pinning and the streams runs on the CPU too (``decode_on = "device"`` on a
CPU model), which is how tests exercise it without a GPU.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchserve.backends.images import CROP_SIDE, IMAGENET_MEAN, IMAGENET_STD, RESIZE_SIDE
from batchserve.errors import InvalidInput

if TYPE_CHECKING:
    import torch


DEVICE_FORMATS = ("JPEG", "MPO")  # Pillow names a JPEG with an MPF marker (phone photos) MPO
DEVICE_MODES = ("RGB", "L")  # YCbCr and grayscale JPEGs; CMYK and YCCK ones stay on the CPU
_EOI = b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class Jpeg:
    """A JPEG row's bytes, decoded with its batch on the model's device."""

    data: bytes
    pixels: int  # width x height, from its header: what decoding it takes on the device


def goes_to_device(image_format: str | None, mode: str, data: bytes) -> bool:
    """Whether an image (its header as Pillow read it) is decoded on the device: a YCbCr or
    grayscale JPEG that ends with its end-of-image marker. A file cut short, or with bytes after
    the marker, takes the CPU path, whose errors (a 400 before admission) and tolerance are
    Pillow's; so do CMYK JPEGs, whose colours nvJPEG does not convert as Pillow does."""
    return image_format in DEVICE_FORMATS and mode in DEVICE_MODES and data.endswith(_EOI)


@dataclass(slots=True)
class Prepared:
    """A batch ready for the model, and the rows that failed alone."""

    batch: torch.Tensor | None  # N x 3 x 224 x 224, model dtype, channels_last; None if all failed
    failures: dict[int, InvalidInput]  # row index -> why it could not be decoded
    staging: list[torch.Tensor] = field(default_factory=list)
    """Host buffers the device may still read: keep them until the batch's results are back."""


class BatchInputs:
    """Turns a batch's rows (CPU crops or ``Jpeg``) into the model's input on ``device``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, *,
                 cpu_crop: Callable[[bytes], torch.Tensor], max_pixels_per_call: int) -> None:
        """``cpu_crop``: a JPEG's bytes to its CPU-path crop (224 x 224 x 3 uint8), raising
        ``InvalidInput`` for an image it cannot decode."""
        import torch

        self.device = device
        self.dtype = dtype
        self._cpu_crop = cpu_crop
        self._max_pixels_per_call = max_pixels_per_call
        self._cuda = device.type == "cuda"
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self._local = threading.local()

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        """On CUDA, the calling thread's own stream (made on its first batch); else nothing."""
        if not self._cuda:
            return contextlib.nullcontext()
        import torch

        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return torch.cuda.stream(stream)

    def prepare(self, images: Sequence[torch.Tensor | Jpeg]) -> Prepared:
        """The batch of ``images`` in order, less those that failed (``Prepared.failures``).
        Call it inside ``stream()`` and ``torch.inference_mode()``."""

        prepared = Prepared(None, {})
        host: dict[int, torch.Tensor] = {}  # row -> HWC uint8 crop on the host
        decoded: dict[int, torch.Tensor] = {}  # row -> CHW float crop on the device
        jpegs: list[tuple[int, Jpeg]] = []
        for index, item in enumerate(images):
            if isinstance(item, Jpeg):
                jpegs.append((index, item))
            else:
                host[index] = item
        for part in _calls(jpegs, self._max_pixels_per_call):
            data, staging = self._gather([row for _, row in part])
            prepared.staging.append(staging)
            for (index, row), image in zip(part, self._decode(data), strict=True):
                if image is not None:
                    decoded[index] = _resize_crop(image)
                    continue
                try:  # refused by the device's decoder: the CPU path, for this row alone
                    host[index] = self._cpu_crop(row.data)
                except InvalidInput as exc:
                    prepared.failures[index] = exc
        kept = [index for index in range(len(images)) if index not in prepared.failures]
        if kept:
            prepared.batch = self._assemble(kept, host, decoded)
        return prepared

    def _gather(self, rows: list[Jpeg]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The rows' bytes copied into one host buffer (pinned on CUDA, so the decoder's copy to
        the device is a DMA that does not wait on pageable memory), and a view of each."""
        import numpy
        import torch

        buffer = torch.empty(sum(len(row.data) for row in rows), dtype=torch.uint8,
                             pin_memory=self._cuda)
        array = buffer.numpy()
        views = []
        start = 0
        for row in rows:
            stop = start + len(row.data)
            array[start:stop] = numpy.frombuffer(row.data, dtype=numpy.uint8)
            views.append(buffer[start:stop])
            start = stop
        return views, buffer

    def _decode(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One decode call for all of ``data``; if it refuses (it returns nothing when any image
        fails), each image alone, ``None`` for those refused again."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            if len(data) == 1:
                return [None]
        images: list[torch.Tensor | None] = []
        for one in data:
            try:
                images.extend(decode_jpeg([one], mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                images.append(None)
        return images

    def _assemble(self, kept: list[int], host: dict[int, torch.Tensor],
                  decoded: dict[int, torch.Tensor]) -> torch.Tensor:
        """The kept rows in order, normalised (ToTensor + Normalize's arithmetic) into the
        model's dtype, channels_last."""
        import torch

        on_host = [index for index in kept if index in host]
        if len(on_host) == len(kept):  # no JPEG decoded on the device: the CPU crops alone
            batch = self._upload(torch.stack([host[index] for index in kept]))
        else:
            batch = torch.empty((len(kept), 3, CROP_SIDE, CROP_SIDE), dtype=torch.float32,
                                device=self.device, memory_format=torch.channels_last)
            position = {index: n for n, index in enumerate(kept)}
            on_device = [index for index in kept if index in decoded]
            rows = torch.tensor([position[index] for index in on_device], device=self.device)
            batch.index_copy_(0, rows, torch.stack([decoded[index] for index in on_device]))
            if on_host:
                rows = torch.tensor([position[index] for index in on_host], device=self.device)
                batch.index_copy_(0, rows, self._upload(torch.stack([host[i] for i in on_host])))
        batch = batch.div_(255).sub_(self._mean).div_(self._std)
        return batch.to(dtype=self.dtype, memory_format=torch.channels_last)

    def _upload(self, pixels: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 on the host to N x 3 x H x W float32 on the device (NHWC seen
        as NCHW is channels_last already); without blocking the host on CUDA."""
        if self._cuda:
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        return pixels.permute(0, 3, 1, 2).float()


def _calls(rows: list[tuple[int, Jpeg]], max_pixels: int) -> Iterator[list[tuple[int, Jpeg]]]:
    """``rows`` in order, cut into runs of at most ``max_pixels`` header pixels (a row larger
    than that alone): what one decode call holds on the device at once is 3 bytes a pixel."""
    part: list[tuple[int, Jpeg]] = []
    pixels = 0
    for index, row in rows:
        if part and pixels + row.pixels > max_pixels:
            yield part
            part, pixels = [], 0
        part.append((index, row))
        pixels += row.pixels
    if part:
        yield part


def _resize_crop(image: torch.Tensor) -> torch.Tensor:
    """A decoded 3 x H x W uint8 image to its 3 x 224 x 224 float32 center crop (0 to 255):
    short side to ``RESIZE_SIDE``, bilinear with antialiasing, as ``transforms.Resize`` does."""
    from torchvision.transforms.v2 import functional

    resized = functional.resize(image.float(), [RESIZE_SIDE], antialias=True)
    crop: torch.Tensor = functional.center_crop(resized, [CROP_SIDE, CROP_SIDE])
    return crop
