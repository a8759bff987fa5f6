"""batchserve.pinning: the container's pinned demo repository, checked on a small one here."""

from __future__ import annotations

from pathlib import Path

from batchserve.artifacts import artifact_sha256
from batchserve.config import load_models
from batchserve.pinning import pin


def test_pin_adds_every_digest_and_requires_them(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "w.bin").write_bytes(b"w")
    path = tmp_path / "models.toml"
    path.write_text(
        '# the repository\n[[models]]\nname = "a"\nbackend = "echo"\npath = "a.bin"\n\n'
        '[[models]]\nname = "f"  # a folder\nbackend = "echo"\npath = "folder"\noptions = { delay_ms = 1 }\n')
    pin(path)
    text = path.read_text()
    assert text.startswith("[repository]\nrequire_sha256 = true\n")
    assert "# the repository" in text and "# a folder" in text
    configs = {c.name: c for c in load_models(path)}
    assert configs["a"].sha256 == artifact_sha256(tmp_path / "a.bin")
    assert configs["f"].sha256 == artifact_sha256(tmp_path / "folder")
    pin(path)  # pinning again changes nothing
    assert path.read_text() == text
