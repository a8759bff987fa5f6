"""Pin a model repository: add each model's ``sha256`` and ``[repository] require_sha256 = true``.

Usage: python -m batchserve.pinning models.toml   (rewrites the file in place)

The container runs this on its demo repository at build time, so that requiring pins is its
default: a mounted repository must then pin its artifacts too (``batchserve sha256 PATH``).
The file is edited as text, keeping its comments and layout, and checked by loading it again.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from batchserve.artifacts import artifact_sha256
from batchserve.config import load_models

_NAME = re.compile(r'^\s*name\s*=\s*"([^"]+)"')


def pin(path: Path) -> None:
    digests = {c.name: artifact_sha256(c.path) for c in load_models(path) if c.sha256 is None}
    lines = path.read_text(encoding="utf-8").splitlines()
    pinned: list[str] = []
    in_model = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            in_model = stripped == "[[models]]"
        pinned.append(line)
        match = _NAME.match(line)
        if in_model and match and match.group(1) in digests:
            pinned.append(f'sha256 = "{digests[match.group(1)]}"')
    if "[repository]" in (line.strip() for line in pinned):
        header = next(i for i, line in enumerate(pinned) if line.strip() == "[repository]")
        pinned = [line for line in pinned if not line.strip().startswith("require_sha256")]
        pinned.insert(header + 1, "require_sha256 = true")
    else:
        pinned = ["[repository]", "require_sha256 = true", "", *pinned]
    path.write_text("\n".join(pinned) + "\n", encoding="utf-8")
    load_models(path)  # a mistake here would have stopped the server: stop the build instead


if __name__ == "__main__":
    pin(Path(sys.argv[1]))
