"""`import batchserve` must stay light: no torch, no side effects."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT


def test_importing_the_server_does_not_import_torch() -> None:
    code = (
        "import sys, batchserve, batchserve.app, batchserve.cli, batchserve.backends.sklearn\n"
        "from batchserve.backends import backend_class\n"
        "backend_class('sklearn')\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--config" in result.stdout and "--shutdown-grace-s" in result.stdout


def test_sha256_command_pins_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01")

    def digest(path: Path) -> str:
        result = subprocess.run([sys.executable, "-m", "batchserve", "sha256", str(path)],
                                capture_output=True, text=True, check=True)
        return result.stdout.strip()

    assert digest(folder / "config.json") == hashlib.sha256(b"{}").hexdigest()
    before = digest(folder)
    assert len(before) == 64
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x02")
    assert digest(folder) != before
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    assert digest(folder) == before
    (folder / "extra.txt").write_text("x")
    assert digest(folder) != before


def test_the_wheel_installs_batchserve_and_batchserve_planning_only(tmp_path: Path) -> None:
    """What `pip install batchserve` puts on sys.path: our two packages, no `server`, no tests.
    Built from a copy of what the Dockerfile copies (pyproject.toml, README.md, server/)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "server", source / "server",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheels"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("batchserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"batchserve", "batchserve_planning"}
    assert "batchserve_planning/load/shared.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "batchserve = batchserve.cli:main" in archive.read(entry_points).decode()


def test_the_onnx_backends_load_and_answer_without_torch(tmp_path: Path) -> None:
    """The onnx extra serves without torch: resolving every ONNX backend, loading a graph and
    running a batch import neither torch nor transformers."""
    from tests.support.graphs import linear

    graph = linear(tmp_path / "linear.onnx")
    code = (
        "import sys\n"
        "from batchserve.backends import backend_class\n"
        "from batchserve.config import ModelConfig\n"
        "for name in ('onnx', 'onnx-image', 'onnx-classifier', 'onnx-embedding'):\n"
        "    backend_class(name)\n"
        f"backend = backend_class('onnx')(ModelConfig(name='m', backend='onnx', path={str(graph)!r}))\n"
        "backend.load('cpu')\n"
        "assert backend.predict_batch([backend.preprocess([1, 2, 3], None)]) == [[16.0, 22.0]]\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
