"""Paths as the unauthenticated routes and answers show them: the server's own folders left out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batchserve.registry import ServedModel


class PublicPaths:
    """Paths as the unauthenticated routes show them: relative to the repository ``root``, and of
    an artifact outside it only its name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else path.name

    def text(self, text: str) -> str:
        """``text`` (a load error's reason) with the root's prefix taken off the paths it names."""
        return text.replace(f"{self.root}{os.sep}", "")

    def status(self, model: ServedModel) -> dict[str, Any]:
        status = model.status()
        if status["reason"] is not None:
            status["reason"] = self.text(status["reason"])
        return status
