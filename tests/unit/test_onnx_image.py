"""The image without torch (Dockerfile.onnx): its hashed lock covers what it serves with, and
holds no torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from batchserve.config import parse_models
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

LOCK = ROOT / "requirements" / "image-onnx.txt"
EXTRAS = ("onnx", "xgboost", "lightgbm", "tracing")
"""The extras the image serves with: scripts/lock-requirements.sh's EXTRAS for this lock."""
NOT_IN_IT = {"torch", "torchvision", "transformers", "triton", "sentence-transformers"}


def locked() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", LOCK.read_text(encoding="utf-8"))
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            spec, *hashes = re.split(r"\s+(?=--)", line)
            assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), line
            requirement = Requirement(spec)
            [specifier] = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_the_onnx_lock_pins_what_the_image_serves_with_and_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pins = locked()
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}: run scripts/lock-requirements.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert not NOT_IN_IT & set(pins)
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert f'EXTRAS="{" ".join(EXTRAS)}"' in LOCK.read_text(encoding="utf-8")  # how it was made


def test_the_onnx_image_installs_its_hashed_lock_and_checks_torch_is_absent() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile.onnx").read_text(encoding="utf-8"))
    assert "COPY requirements/image-onnx.txt ./requirements.txt" in text
    installs = re.findall(r"pip install [^&\n]*", text)
    assert installs
    for install in installs:
        assert ("--require-hashes -r requirements.txt" in install
                or ("--no-deps" in install and "/wheels/" in install)), install
    assert 'find_spec("torch") is not None' in text


def test_its_repository_file_is_valid_and_needs_no_torch_backend(tmp_path: Path) -> None:
    data = tomllib.loads((ROOT / "models" / "models-onnx.toml").read_text(encoding="utf-8"))
    configs = parse_models(data, source=tmp_path / "models.toml")
    assert {c.name: c.backend for c in configs} == {
        "diabetes": "sklearn", "cancer": "xgboost", "resnet50": "onnx-image",
        "sentiment": "onnx-classifier", "minilm": "onnx-embedding"}
