"""Image input that the image classifiers share, torch or not (``resnet50.py``, ``onnx_image.py``):
the item forms, the header checks before any decode, and the CPU eval transform.

An item is an image's bytes (a raw or multipart body) or its base64 text (a string,
``{"b64": ...}`` or a data URL). Every image's header is read, and its pixels counted against
``max_pixels`` and the request's ``max_request_pixels``, before any is decoded. The CPU transform
is torchvision's ``Resize(256)`` + ``CenterCrop(224)`` on a Pillow image, done in Pillow alone
(the same sizes, offsets and bilinear filter as torchvision computes for a Pillow image), so
it needs no torch; normalisation is the model's, per batch.

Importing this module imports neither torch nor Pillow; each function does, when called.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchserve.backends.capabilities import Samples
from batchserve.backends.multipart import files_from_multipart
from batchserve.errors import InvalidInput, UnsupportedMediaType

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

FORMATS = ("JPEG", "PNG", "WEBP")
RESIZE_SIDE = 256  # the eval transform's Resize(256): the short side before the center crop
CROP_SIDE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageOptions(BaseModel):
    """Options every image classifier takes."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=5, ge=1, le=1000)
    """Classes returned per image unless the request's ``parameters.top_k`` says otherwise."""
    max_pixels: int = Field(default=4096 * 4096, ge=1)
    """Larger images are refused (400), from their header, before anything is decoded. A full
    decode peaks at 4 to 16 bytes a pixel (RGB JPEG or PNG to WebP), so cores x 16 B x max_pixels
    must fit in the memory the server has to spare (SECURITY.md, "Image memory")."""
    max_request_pixels: int = Field(default=100_000_000, ge=1)
    """A request whose images total more pixels (summed from their headers) is refused (400)
    before any is decoded: it bounds the decoding one request can ask of the server."""
    decode: Literal["draft", "full"] = "draft"
    """``draft``: a JPEG is decoded by libjpeg at the smallest of its 1/8, 1/4, 1/2 scales that
    keeps the short side at least ``RESIZE_SIDE`` (the resize target), then resized and cropped as
    usual: the same pipeline on a smaller decode, several times faster and lighter on large photos
    (benchmarks/README.md, "JPEG draft decoding"); images already that small decode unchanged.
    ``full``: every image decoded at full size, torchvision's eval transform exactly.
    Applies to the images decoded on the CPU (``decode_on``)."""


def parse_top_k(parameters: Any, default: int, classes: int) -> int:
    """The request's ``top_k`` (from JSON or a query string), 1 to ``classes``."""
    unknown = sorted(set(parameters) - {"top_k"})
    if unknown:
        raise InvalidInput(f"unknown parameters {unknown}; this model takes top_k")
    top_k = parameters.get("top_k", default)
    if isinstance(top_k, str) and top_k.isascii() and top_k.isdigit():  # from a query string
        top_k = int(top_k)
    if type(top_k) is not int or not 1 <= top_k <= classes:
        raise InvalidInput(f"parameter top_k must be an integer from 1 to {classes}")
    return top_k


def decode_body(model: str, content_type: str, body: bytes) -> list[Any]:
    """The items of a non-JSON body: one raw image, or the files of a multipart form."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        return [body]
    if media_type == "multipart/form-data":
        return files_from_multipart(content_type, body)
    raise UnsupportedMediaType(f"model '{model}' reads JSON, image/* or "
                               f"multipart/form-data bodies, not {media_type!r}")


def check_images(items: list[Any], options: ImageOptions) -> list[bytes]:
    """Every image's header read before any is decoded: each within ``max_pixels``, all of
    them within ``max_request_pixels``. The items come back as bytes (base64 decoded once)."""
    budget = options.max_request_pixels
    images: list[bytes] = []
    total = 0
    for index, item in enumerate(items):
        try:
            data = image_bytes(item)
            with open_image(data, options.max_pixels) as image:
                width, height = image.size
        except InvalidInput as exc:
            raise InvalidInput(f"item {index}: {exc.message}") from None
        total += width * height
        if total > budget:
            raise InvalidInput(
                f"item {index}: images 0 to {index} of this request total {total} pixels, over "
                f"the budget of {budget} pixels per request (options.max_request_pixels); "
                "send fewer or smaller images per request")
        images.append(data)
    return images


def image_bytes(item: Any) -> bytes:
    """Raw bytes (from an upload) or base64 text (JSON), as a string or ``{"b64": ...}``."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, dict):
        if set(item) != {"b64"}:
            raise InvalidInput(f"expected {{\"b64\": ...}}, got keys {sorted(item)[:5]}")
        item = item["b64"]
    if not isinstance(item, str):
        raise InvalidInput(f"expected a base64 string of an image, got {type(item).__name__}")
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        data = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("not valid base64") from None
    if not data:
        raise InvalidInput("empty image")
    return data


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened lazily (its header read, nothing decoded), refused unless it is a JPEG,
    PNG or WebP of at most ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(f"image exceeds the cap of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidInput("not a readable image (JPEG, PNG or WebP expected)") from None
    except Exception:  # a hostile header can trip any of PIL's parsers; it is the client's error
        log.info("PIL could not open an image", exc_info=True)
        raise InvalidInput("not a readable image (JPEG, PNG or WebP expected)") from None
    # Pillow names a JPEG with an MPF marker (phone photos with a depth map or a preview) "MPO";
    # its first picture is the photo, decoded as any JPEG.
    if image.format not in FORMATS and image.format != "MPO":
        image.close()
        raise InvalidInput(f"image format {image.format} not accepted; send JPEG, PNG or WebP")
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InvalidInput(f"image of {width}x{height} pixels exceeds the cap of {max_pixels} pixels "
                           "(options.max_pixels)")
    return image


def crop(image: Image.Image, decode: Literal["draft", "full"]) -> np.ndarray[Any, Any]:
    """The CPU transform of an opened image: decode (``draft`` or ``full``), RGB, short side
    resized to ``RESIZE_SIDE`` (bilinear), center crop of ``CROP_SIDE``; 224 x 224 x 3 uint8.
    The sizes and offsets are torchvision's for a Pillow image: the long side
    ``int(256 * long / short)``, the crop's corner ``round((side - 224) / 2)``."""
    import numpy
    from PIL import Image

    if decode == "draft":
        # JPEG only (a no-op for other formats): libjpeg's DCT scaling, chosen from the
        # header so that both sides stay >= RESIZE_SIDE, i.e. the short side stays at or
        # above the resize target and the resize below still does the last step.
        image.draft("RGB", (RESIZE_SIDE, RESIZE_SIDE))
    try:
        image.load()
        # An RGB image is used as decoded: convert("RGB") would copy it (4 bytes a pixel).
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        width, height = rgb.size
        short, long = min(width, height), max(width, height)
        if short != RESIZE_SIDE:
            sides = (RESIZE_SIDE, int(RESIZE_SIDE * long / short))
            size = sides if width <= height else sides[::-1]
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        width, height = rgb.size
        top = round((height - CROP_SIDE) / 2.0)
        left = round((width - CROP_SIDE) / 2.0)
        pixels = numpy.array(rgb.crop((left, top, left + CROP_SIDE, top + CROP_SIDE)))
    except (OSError, ValueError, SyntaxError):
        raise InvalidInput("image data is corrupt or truncated") from None
    return pixels


def black_jpeg() -> bytes:
    """A small JPEG, to warm up a decoder."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


def sample_photo() -> Samples:
    """scikit-learn's bundled photo: the image classifiers' sample input for the planner."""
    from pathlib import Path

    import sklearn.datasets

    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    return Samples([photo.read_bytes()], f"{photo.name}, scikit-learn's bundled photo")
