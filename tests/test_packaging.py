"""`import batchserve` must stay light: no torch, no side effects."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


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
