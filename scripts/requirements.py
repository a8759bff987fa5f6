"""Print the runtime requirements of pyproject.toml, one per line: every extra but ``dev``.

The Dockerfile installs these in a layer of their own, before it copies the source, so that the
big layer (torch) is rebuilt only when they change, not on any edit of pyproject.toml.

Usage: python3 scripts/requirements.py [pyproject.toml] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"]
    wanted = list(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        if extra != "dev":
            # "batchserve[vision,text]" names the project's own extras, listed here anyway.
            wanted += [r for r in requirements if not r.replace("_", "-").startswith(name)]
    return list(dict.fromkeys(wanted))


if __name__ == "__main__":
    print("\n".join(runtime_requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
