"""`import server` must stay light: no torch, no side effects."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_server_does_not_import_torch() -> None:
    code = (
        "import sys, server, server.app, server.cli, server.backends.sklearn\n"
        "from server.backends import backend_class\n"
        "backend_class('sklearn')\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--config" in result.stdout and "--shutdown-grace-s" in result.stdout
