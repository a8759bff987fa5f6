"""sha256 pins check what is loaded: the artifact is opened once, hashed through those open files,
and the backend reads the same files (server/batchserve/artifacts.py), so a file replaced after
the check is not what gets served."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.artifacts import artifact_sha256, pinned
from batchserve.backends.base import LoadError

from tests.support import running_server, write_models


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_file_replaced_after_the_check_is_not_what_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"the pinned bytes")
    digest = hashlib.sha256(b"the pinned bytes").hexdigest()

    def swap() -> None:  # what a volume update or an attacker with the folder does
        (tmp_path / "other.bin").write_bytes(b"other bytes")
        os.replace(tmp_path / "other.bin", path)

    before = open_descriptors()
    with pinned(path, digest, after_hash=swap) as loaded:
        assert path.read_bytes() == b"other bytes"  # the configured path now holds another file
        assert loaded.name == "model.bin"  # same name (backends look at suffixes)
        assert loaded.read_bytes() == b"the pinned bytes"
    assert not loaded.exists()  # the private links are gone, and the descriptors closed
    assert open_descriptors() == before


def test_a_symlink_switched_after_the_check_is_not_followed(tmp_path: Path) -> None:
    """How Kubernetes updates a ConfigMap or Secret volume: a symlink flipped to a new folder."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "weights.bin").write_bytes(version.encode() * 100)
    (tmp_path / "current").symlink_to("v1")
    path = tmp_path / "current" / "weights.bin"

    def switch() -> None:
        (tmp_path / "next").symlink_to("v2")
        os.replace(tmp_path / "next", tmp_path / "current")

    with pinned(path, hashlib.sha256(b"v1" * 100).hexdigest(), after_hash=switch) as loaded:
        assert path.read_bytes() == b"v2" * 100
        assert loaded.read_bytes() == b"v1" * 100


def test_a_folder_reads_the_files_hashed_and_no_others(tmp_path: Path) -> None:
    folder = tmp_path / "transformer"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    digest = artifact_sha256(folder)

    def tamper() -> None:
        (tmp_path / "new").write_bytes(b"evil weights")
        os.replace(tmp_path / "new", folder / "sub" / "model.safetensors")
        (folder / "extra.py").write_text("import os")
        (folder / "config.json").unlink()

    with pinned(folder, digest, after_hash=tamper) as loaded:
        assert loaded.name == "transformer" and loaded.is_dir()
        files = sorted(p.relative_to(loaded).as_posix() for p in loaded.rglob("*") if p.is_file())
        assert files == ["config.json", "sub/model.safetensors"]
        assert (loaded / "config.json").read_text() == "{}"
        assert (loaded / "sub" / "model.safetensors").read_bytes() == b"weights"


def test_a_file_written_in_place_while_loading_is_refused(tmp_path: Path) -> None:
    """A write into the very file (not a replacement) changes what the open file reads: the load
    is refused rather than served unchecked."""
    path = tmp_path / "model.bin"
    path.write_bytes(b"0123456789")

    def overwrite() -> None:
        with path.open("r+b") as handle:
            handle.write(b"X")

    with pytest.raises(LoadError, match=r"changed while it was loaded \(model\.bin\)"), \
            pinned(path, artifact_sha256(path), after_hash=overwrite) as loaded:
        loaded.read_bytes()


def test_a_mismatch_is_refused_before_the_backend_sees_anything(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"bytes")
    called = []
    with pytest.raises(LoadError, match="refusing to load it") as raised, \
            pinned(path, "0" * 64, after_hash=lambda: called.append(1)):
        pytest.fail("the block must not run")
    assert str(path) in str(raised.value) and hashlib.sha256(b"bytes").hexdigest() in str(raised.value)
    assert called == []


def test_a_fifo_in_place_of_the_artifact_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    os.mkfifo(path)
    with pytest.raises(LoadError, match="not a regular file"), pinned(path, "0" * 64):
        pass


def test_the_folder_digest_is_the_documented_one(tmp_path: Path) -> None:
    """Pins written before this module keep matching: sorted ``relative/path<TAB>sha256`` lines."""
    folder = tmp_path / "m"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"a")
    (folder / "b" / "c.bin").write_bytes(b"c")
    lines = f"a.txt\t{hashlib.sha256(b'a').hexdigest()}\nb/c.bin\t{hashlib.sha256(b'c').hexdigest()}\n"
    assert artifact_sha256(folder) == hashlib.sha256(lines.encode()).hexdigest()
    assert artifact_sha256(folder / "a.txt") == hashlib.sha256(b"a").hexdigest()


def test_pinned_models_of_every_backend_load_and_answer_on_a_real_server(
        tmp_path: Path, diabetes_path: Path, resnet_weights: Path, transformer_dir: Path) -> None:
    """joblib, safetensors and a save_pretrained folder, each read through the open files."""
    models: list[dict[str, Any]] = [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path),
         "sha256": artifact_sha256(diabetes_path)},
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights),
         "sha256": artifact_sha256(resnet_weights), "options": {"weights": "file"}},
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir),
         "sha256": artifact_sha256(transformer_dir)},
    ]
    config = write_models(tmp_path / "models.toml", models, require_sha256=True)
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/predict/diabetes", json={"inputs": [[0.0] * 10]}).status_code == 200
        response = client.post("/predict/sentiment", json={"inputs": ["works fine"]})
        assert response.status_code == 200, response.text
        described = client.get("/models/resnet50").json()
        assert described["weights"].startswith("resnet50.safetensors (random")
        # relative to the repository root (write_models: the folder above models.toml's)
        assert described["config"]["path"] == str(resnet_weights.relative_to(tmp_path.parent))


def test_the_registry_serves_the_pinned_model_when_the_file_is_replaced_after_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ModelRegistry and the sklearn backend: the real check, with the swap between it
    and the backend's load (``after_hash``); the served model is the pinned one."""
    import asyncio
    import functools

    import joblib
    import numpy as np
    from batchserve import registry as registry_module
    from batchserve.config import load_models
    from batchserve.metrics import Metrics
    from batchserve.registry import ModelRegistry
    from sklearn.dummy import DummyRegressor

    path = tmp_path / "repo" / "model.joblib"
    path.parent.mkdir()
    joblib.dump(DummyRegressor(strategy="constant", constant=1.0).fit(np.zeros((2, 3)), [1, 1]), path)
    joblib.dump(DummyRegressor(strategy="constant", constant=666.0).fit(np.zeros((2, 3)), [0, 0]),
                tmp_path / "repo" / "swapped.joblib")
    config = write_models(tmp_path / "repo" / "models.toml", [
        {"name": "m", "backend": "sklearn", "path": str(path), "sha256": artifact_sha256(path)}],
        root=tmp_path / "repo", require_sha256=True)
    monkeypatch.setattr(registry_module, "pinned", functools.partial(
        pinned, after_hash=lambda: os.replace(tmp_path / "repo" / "swapped.joblib", path)))

    async def serve_once() -> list[object]:
        registry = ModelRegistry([], Metrics(max_batch_size=8))
        model = (await registry.load([load_models(config)[0]], grace_s=0))[-1]
        assert model.state == "ready", model.reason
        outputs = list(model.backend.predict_batch([model.backend.preprocess([0.0, 0.0, 0.0], None)]))
        await registry.close(0)
        return outputs

    assert asyncio.run(serve_once()) == [1.0]
    assert joblib.load(path).constant == 666.0  # the path did hold the other model meanwhile
