"""resnet50 image limits and JPEG draft decoding, against a real server with the demo weights."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sklearn.datasets
from PIL import Image

from tests.support import ServerProcess, running_server, write_models

PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
NAMES = ("china.jpg", "flower.jpg")  # 640 x 427 each
# Measured (benchmarks/README.md, "JPEG draft decoding"): draft vs full differ by at most 0.013
# in any of the 1000 probabilities on these photos scaled to 1000, 2000 and 4000 px wide; a draft
# that lets the short side fall below the resize target (to 128, say) differs by 0.038 to 0.12.
PROBABILITY_TOLERANCE = 0.025


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, resnet_weights: Path) -> Iterator[ServerProcess]:
    common: dict[str, Any] = {"backend": "resnet50", "path": str(resnet_weights),
                              "max_batch_size": 2, "max_wait_ms": 5}
    config = write_models(tmp_path_factory.mktemp("images") / "models.toml", [
        {**common, "name": "resnet50"},  # every image option at its default
        {**common, "name": "full", "options": {"decode": "full"}},
    ])
    with running_server(config) as process:
        yield process


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    text: str = response.json()["error"]["message"]
    return text


def test_a_7000x7000_png_is_refused_from_its_header_by_default(server: ServerProcess) -> None:
    bomb = encode(Image.new("L", (7000, 7000), 90), "PNG")  # ~60 KB on the wire, 49 Mpx
    assert len(bomb) < 200_000
    small = encode(Image.new("RGB", (32, 32), (10, 20, 30)), "PNG")
    response = httpx.post(f"{server.url}/predict", timeout=60,
                          json={"model": "resnet50", "inputs": [b64(small), b64(bomb)]})
    text = message(response)
    assert text.startswith("item 1: ") and "7000x7000" in text and "max_pixels" in text
    raw = httpx.post(f"{server.url}/predict/resnet50", content=bomb, timeout=60,
                     headers={"content-type": "image/png"})
    assert message(raw).startswith("item 0: ")


def truncated_png(side: int) -> bytes:
    """A PNG whose header says side x side but whose pixel data stops after a few bytes: any
    attempt to decode it fails, so an answer that reads only headers is told from one that decodes."""
    data = encode(Image.new("L", (side, side), 7), "PNG")
    return data[:120]


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_the_request_pixel_budget_is_checked_from_headers_before_any_decode(
        server: ServerProcess, form: str) -> None:
    image = truncated_png(4000)  # 16 Mpx: within max_pixels; seven exceed 100 Mpx a request

    def post(count: int) -> httpx.Response:
        if form == "json":
            return httpx.post(f"{server.url}/predict", timeout=60,
                              json={"model": "resnet50", "inputs": [b64(image)] * count})
        files = [(f"f{i}", (f"{i}.png", image, "image/png")) for i in range(count)]
        return httpx.post(f"{server.url}/predict/resnet50", files=files, timeout=60)

    over = message(post(7))
    assert over.startswith("item 6: ") and "max_request_pixels" in over
    # Six fit the budget: the first is then decoded, and found truncated.
    within = message(post(6))
    assert within.startswith("item 0: ") and "corrupt or truncated" in within


def probabilities(server: ServerProcess, model: str, jpeg: bytes) -> list[float]:
    response = httpx.post(f"{server.url}/predict/{model}?top_k=1000", content=jpeg, timeout=60,
                          headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    return [c["probability"] for c in sorted(output, key=lambda c: c["index"])]


def scaled(name: str, width: int) -> bytes:
    photo = Image.open(PHOTOS / name).convert("RGB")
    size = (width, round(photo.height * width / photo.width))
    return encode(photo.resize(size, Image.Resampling.BICUBIC), "JPEG", quality=90)


def test_sklearn_photos_are_already_small_and_decode_exactly_as_in_full(server: ServerProcess) -> None:
    # 427 px short side: no DCT scale keeps it >= 256, so draft decodes them at full size.
    for name in NAMES:
        jpeg = (PHOTOS / name).read_bytes()
        assert probabilities(server, "resnet50", jpeg) == probabilities(server, "full", jpeg)


@pytest.mark.parametrize("width", [1000, 4000])  # DCT scale 1/2 and 1/8
@pytest.mark.parametrize("name", NAMES)
def test_draft_decoding_of_large_photos_stays_close_to_the_full_decode(
        server: ServerProcess, name: str, width: int) -> None:
    jpeg = scaled(name, width)
    draft, full = probabilities(server, "resnet50", jpeg), probabilities(server, "full", jpeg)
    # The demo weights are random: their top-1 is one class for most photos, so the agreement of
    # the whole distribution is what tells a faithful smaller decode from a bad one.
    assert max(range(1000), key=draft.__getitem__) == max(range(1000), key=full.__getitem__)
    difference = max(abs(d - f) for d, f in zip(draft, full, strict=True))
    assert 0 < difference < PROBABILITY_TOLERANCE  # > 0: the draft path did run


def test_a_jpeg_with_an_mpf_marker_is_a_jpeg(server: ServerProcess) -> None:
    photo = Image.open(PHOTOS / "china.jpg")
    mpo = encode(photo, "MPO", save_all=True, append_images=[photo.resize((160, 107))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"  # what Pillow calls such a file
    response = httpx.post(f"{server.url}/predict/resnet50", content=mpo, timeout=60,
                          headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
