"""The README's first requests, run as a newcomer would (bash and curl) against a real server with
the demo diabetes model, and their answers compared with the ones the README shows: an example
can't drift from what the server says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, free_port, running_server, write_models

EXAMPLE = re.compile(r"```sh\n(?P<command>(?:(?!```).)*?)```\n```json\n(?P<answer>.*?)```", re.DOTALL)
README_URL = "http://127.0.0.1:8000"


def diabetes_examples() -> list[tuple[str, Any]]:
    """The README's (shell command, JSON answer) pairs that call the diabetes model."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(match["command"], json.loads(match["answer"])) for match in EXAMPLE.finditer(readme)
            if "diabetes" in match["command"] and "curl" in match["command"]]


def close(got: Any, shown: Any) -> bool:
    """The same JSON, numbers to the README's precision (the last digits of a float may differ
    between BLAS builds)."""
    if isinstance(shown, float):
        return isinstance(got, float) and got == pytest.approx(shown, rel=1e-9)
    if isinstance(shown, dict):
        return isinstance(got, dict) and got.keys() == shown.keys() and all(
            close(got[key], value) for key, value in shown.items())
    if isinstance(shown, list):
        return isinstance(got, list) and len(got) == len(shown) and all(
            close(a, b) for a, b in zip(got, shown, strict=True))
    return bool(got == shown)


def test_the_readmes_first_requests_answer_what_it_shows(tmp_path: Path, diabetes_path: Path) -> None:
    examples = diabetes_examples()
    assert len(examples) >= 2, "the README's first requests (an answer and an error) were not found"
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}],
        root=diabetes_path.parent)
    with running_server(config) as server:
        for command, shown in examples:
            assert README_URL in command
            result = subprocess.run(["bash", "-c", command.replace(README_URL, server.url)],
                                    capture_output=True, text=True, timeout=30, check=True)
            got = json.loads(result.stdout)
            assert close(got, shown), (command, got, shown)


GRPC_EXAMPLE = re.compile(r"```python\n(?P<code>(?:(?!```).)*?tritonclient\.grpc(?:(?!```).)*?)```\n"
                          r"```text\n(?P<printed>.*?)```", re.DOTALL)
README_GRPC = "127.0.0.1:8001"


def test_the_readmes_grpc_example_prints_what_it_shows(tmp_path: Path, diabetes_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [example] = GRPC_EXAMPLE.finditer(readme)
    assert README_GRPC in example["code"]
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}],
        root=diabetes_path.parent)
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)]):
        code = example["code"].replace(README_GRPC, f"127.0.0.1:{port}")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                check=True)
    assert result.stdout.strip() == example["printed"].strip()
