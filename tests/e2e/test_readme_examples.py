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


WALKTHROUGH = re.compile(r"## Shipping a new model version\n.*?```toml\n(?P<toml>.*?)```.*?"
                         r"```sh\n(?P<commands>.*?)```", re.DOTALL)


def test_the_readmes_version_walkthrough_runs_against_a_serving_server(
        tmp_path: Path, diabetes_path: Path) -> None:
    """Its `versions` line added to a served model's entry, then its calls, each answered 2xx:
    the load brings v2 in as a shadow, and the canary, the promote and the rollback go through."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [walkthrough] = WALKTHROUGH.finditer(readme)
    repo = tmp_path / "repo"
    (repo / "artifacts").mkdir(parents=True)
    for name in ("diabetes.joblib", "diabetes_v2.joblib"):
        (repo / "artifacts" / name).write_bytes(diabetes_path.read_bytes())
    config = write_models(repo / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": "artifacts/diabetes.joblib"}], root=repo)
    token = "walkthrough-management-token"
    with running_server(config, env={"BATCHSERVE_MANAGEMENT_TOKEN": token}) as server:
        with config.open("a", encoding="utf-8") as toml:  # the README's line, in the model's table
            toml.write(walkthrough["toml"])
        answers = []
        for command in walkthrough["commands"].replace(README_URL, server.url).split("\ncurl")[1:]:
            result = subprocess.run(["bash", "-c", "curl -f " + command.split("#")[0].strip()],
                                    capture_output=True, text=True, timeout=60,
                                    env={"BATCHSERVE_MANAGEMENT_TOKEN": token, "PATH": "/usr/bin:/bin",
                                         "AUTH": f"Authorization: Bearer {token}"})
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            answers.append(json.loads(result.stdout))
        assert len(answers) == 5, answers
        loaded, summary, canary, promoted, rolled_back = answers
        assert loaded["versions"] == {"1": {"state": "READY", "reason": None},
                                      "2": {"state": "READY", "reason": None}}
        assert "1->2" in summary["pairs"] or summary["pairs"] == {}  # v2 shadows v1 (copies may lag)
        assert canary["weights"] == {"1": 0.9, "2": 0.1} and canary["shadows"] == {}
        assert promoted["weights"] == {"1": 0.0, "2": 1.0}
        assert rolled_back["weights"] == {"1": 0.9, "2": 0.1}
