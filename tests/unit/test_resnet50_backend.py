"""The resnet50 backend on real photos that ship with scikit-learn, against torchvision in-process."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sklearn.datasets
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torchvision import transforms
from torchvision.models import resnet50

from tests.support import make_client, wait_ready

PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
NAMES = ("china.jpg", "flower.jpg")


@pytest.fixture(scope="module")
def weights(resnet_weights: Path) -> Path:
    return resnet_weights


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("config")
    pt_path = directory / "resnet50.pt"
    torch.save(_state(weights), pt_path)
    torch.save(_Evil(), directory / "evil.pt")
    common: dict[str, Any] = {"backend": "resnet50", "max_batch_size": 2, "max_wait_ms": 5}
    with make_client(directory, [
        {**common, "name": "resnet50", "path": str(weights)},
        {**common, "name": "pt", "path": str(pt_path)},
        {**common, "name": "capped", "path": str(weights), "options": {"max_pixels": 10_000}},
        {**common, "name": "evil", "path": str(directory / "evil.pt")},
        {**common, "name": "gpu", "path": str(weights), "device": "cuda"},
        {**common, "name": "half", "path": str(weights), "options": {"dtype": "float16"}},
        {**common, "name": "missing", "path": str(directory / "absent.safetensors")},
    ]) as test_client:
        wait_ready(test_client, timeout_s=180)
        yield test_client


class _Evil:
    """Not a state_dict: a weights-only load must refuse to unpickle it."""


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def reference(weights: Path, names: tuple[str, ...]) -> torch.Tensor:
    """torchvision's resnet50 in-process with the standard ImageNet eval transform."""
    model = resnet50(weights=None)
    model.load_state_dict(_state(weights))
    model.eval()
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    batch = torch.stack([transform(Image.open(PHOTOS / n).convert("RGB")) for n in names])
    with torch.inference_mode():
        probabilities: torch.Tensor = model(batch).softmax(dim=1)
    return probabilities


def b64(name: str) -> str:
    return base64.b64encode((PHOTOS / name).read_bytes()).decode()


def assert_matches(outputs: list[list[dict[str, Any]]], expected: torch.Tensor, top_k: int) -> None:
    for output, probabilities in zip(outputs, expected, strict=True):
        top = probabilities.topk(top_k)
        assert [o["index"] for o in output] == top.indices.tolist()
        assert [o["probability"] for o in output] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_probabilities_match_torchvision_in_process(client: TestClient, weights: Path) -> None:
    expected = reference(weights, NAMES)
    response = client.post("/predict", json={"model": "resnet50", "inputs": [b64(n) for n in NAMES]})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert_matches(outputs, expected, 5)
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert all(o["label"] == categories[o["index"]] for o in outputs[0])


def test_pt_weights_read_weights_only_give_the_same_answers(client: TestClient, weights: Path) -> None:
    response = client.post("/predict", json={"model": "pt", "inputs": [b64("china.jpg")]})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["outputs"], reference(weights, NAMES[:1]), 5)


def test_raw_upload_multipart_and_object_forms(client: TestClient, weights: Path) -> None:
    expected = reference(weights, NAMES)
    china = (PHOTOS / "china.jpg").read_bytes()
    raw = client.post("/predict/resnet50?top_k=3", content=china,
                      headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert_matches(raw.json()["outputs"], expected[:1], 3)
    files = [("a", ("china.jpg", china, "image/jpeg")),
             ("b", ("flower.jpg", (PHOTOS / "flower.jpg").read_bytes(), "image/jpeg"))]
    multipart = client.post("/predict/resnet50?top_k=2", files=files)
    assert multipart.status_code == 200, multipart.text
    assert_matches(multipart.json()["outputs"], expected, 2)
    wrapped = client.post("/predict", json={
        "model": "resnet50", "inputs": [{"b64": b64("flower.jpg")},
                                        "data:image/jpeg;base64," + b64("china.jpg")],
        "parameters": {"top_k": 1}})
    # The flip (flower first) bites only if the photos' answers differ. With random weights both
    # top-1s are one class (713, measured), so it is their probabilities (0.617 and 0.675) that
    # tell the photos apart, far beyond assert_matches' 1e-4.
    assert abs(float(expected[0].max() - expected[1].max())) > 0.01
    assert_matches(wrapped.json()["outputs"], expected.flip(0), 1)


def png(size: tuple[int, int], image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(("model", "item", "words"), [
    ("resnet50", "not base64!", "not valid base64"),
    ("resnet50", base64.b64encode(b"hello, not an image").decode(), "not a readable image"),
    ("resnet50", base64.b64encode((PHOTOS / "china.jpg").read_bytes()[:50_000]).decode(),
     "corrupt or truncated"),
    ("resnet50", base64.b64encode(png((8, 8), "GIF")).decode(), "format GIF not accepted"),
    ("resnet50", 42, "expected a base64 string"),
    ("resnet50", {"image": "x"}, "expected {\"b64\": ...}"),
    ("capped", base64.b64encode(png((200, 100))).decode(), "200x100 pixels exceeds the cap"),
])
def test_bad_images_are_400_naming_the_item(client: TestClient, model: str, item: Any,
                                            words: str) -> None:
    good = base64.b64encode(png((32, 32))).decode()
    response = client.post("/predict", json={"model": model, "inputs": [good, item]})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("item 1: ") and words in message


def test_small_png_within_the_cap_is_fine(client: TestClient) -> None:
    response = client.post("/predict/capped", content=png((50, 50)), headers={"content-type": "image/png"})
    assert response.status_code == 200


@pytest.mark.parametrize(("query", "words"), [
    ("top_k=0", "top_k must be an integer"), ("top_k=abc", "top_k must be an integer"),
    ("colour=red", "unknown parameters ['colour']")])
def test_bad_parameters_are_400(client: TestClient, query: str, words: str) -> None:
    response = client.post(f"/predict/resnet50?{query}", content=png((32, 32)),
                           headers={"content-type": "image/png"})
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_bad_bodies(client: TestClient) -> None:
    text = client.post("/predict/resnet50", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    field = client.post("/predict/resnet50", files=[("a", ("x.png", png((8, 8)), "image/png"))],
                        data={"top_k": "3"})
    assert field.status_code == 400
    assert "is not a file" in field.json()["error"]["message"]


def test_load_failures_have_reasons(client: TestClient) -> None:
    states = client.get("/readyz").json()["models"]
    assert states["resnet50"]["state"] == "ready"
    assert "weights-only" in states["evil"]["reason"]
    assert "CUDA" in states["gpu"]["reason"]
    assert "runs on GPU only" in states["half"]["reason"]
    assert "not found" in states["missing"]["reason"]
    described = client.get("/models/resnet50").json()
    assert "random (torch.manual_seed(0))" in described["weights"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_float16_on_gpu_agrees_with_float32_on_cpu(tmp_path: Path, weights: Path) -> None:
    with make_client(tmp_path, [{"name": "r", "backend": "resnet50", "path": str(weights),
                                 "device": "cuda", "options": {"dtype": "float16"}}]) as gpu:
        wait_ready(gpu)
        outputs = gpu.post("/predict", json={"model": "r", "inputs": [b64(n) for n in NAMES]}).json()
        expected = reference(weights, NAMES)
        for output, probabilities in zip(outputs["outputs"], expected, strict=True):
            assert output[0]["index"] == int(probabilities.argmax())
