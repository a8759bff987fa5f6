"""models.toml validation: mistakes are refused at start, naming file, model and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batchserve.config import ConfigError, load_models

from tests.support import ROOT, write_models

BASE: dict[str, Any] = {"name": "m", "backend": "sklearn", "path": "artifacts/m.joblib"}


def load(tmp_path: Path, **changes: Any) -> Any:
    return load_models(write_models(tmp_path / "models.toml", [{**BASE, **changes}]))


def test_defaults_and_relative_path(tmp_path: Path) -> None:
    [config] = load(tmp_path)
    assert config.path == (tmp_path / "artifacts" / "m.joblib").resolve()
    assert (config.max_batch_size, config.max_wait_ms, config.max_queue) == (32, 0.0, 1024)
    assert (config.timeout_ms, config.instances, config.device) == (10_000, 1, "cpu")


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"max_batch_size": 0}, "max_batch_size", "greater than or equal to 1"),
    ({"max_batch_size": "big"}, "max_batch_size", "valid integer"),
    ({"max_wait_ms": -1}, "max_wait_ms", "greater than or equal to 0"),
    ({"timeout_ms": 0}, "timeout_ms", "greater than 0"),
    ({"instances": 0}, "instances", "greater than or equal to 1"),
    ({"device": "tpu"}, "device", "'cpu', 'cuda', 'cuda:N' or 'auto'"),
    ({"sha256": "abc"}, "sha256", "64 hexadecimal"),
    ({"name": "bad name/"}, "name", "letters, digits"),
    ({"batch": 4}, "batch", "Extra inputs are not permitted"),
    ({"backend": "nope"}, "backend", "unknown backend 'nope'"),
    ({"options": {"output": "logits"}}, "options.output", "'predict' or 'proba'"),
    ({"options": {"colour": 1}}, "options.colour", "Extra inputs are not permitted"),
])
def test_bad_values_name_file_model_and_field(tmp_path: Path, changes: dict[str, Any], field: str,
                                              words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, **changes)
    message = str(error.value)
    assert message.startswith(str(tmp_path / "models.toml"))
    assert f"field '{field}'" in message
    assert words in message
    if "name" not in changes:
        assert "model 'm'" in message


def test_missing_required_field(tmp_path: Path) -> None:
    path = write_models(tmp_path / "models.toml", [{"name": "m", "backend": "sklearn"}])
    with pytest.raises(ConfigError, match="model 'm': field 'path': Field required"):
        load_models(path)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = write_models(tmp_path / "models.toml", [BASE, BASE])
    with pytest.raises(ConfigError, match="duplicate model name"):
        load_models(path)


def test_unknown_top_level_key_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('colour = "red"\n[[models]]\nname = "m"\nbackend = "sklearn"\npath = "x"\n')
    with pytest.raises(ConfigError, match="field 'colour'"):
        load_models(path)
    path.write_text("[[models]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_models(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_models(tmp_path / "absent.toml")


def test_third_party_backend_is_found_through_its_entry_point(tmp_path: Path) -> None:
    [config] = load(tmp_path, backend="echo", options={"delay_ms": 5})
    assert config.backend == "echo"


def test_shipped_repository_file_is_valid() -> None:
    configs = {c.name: c for c in load_models(ROOT / "models" / "models.toml")}
    assert {"diabetes", "resnet50", "sentiment", "cancer", "minilm"} <= configs.keys()
    assert configs["cancer"].backend == "xgboost" and configs["cancer"].path.suffix == ".json"
    assert configs["minilm"].backend == "embedding" and configs["minilm"].sha256 is not None


def test_pickle_artifacts_load_only_from_inside_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    outside = {**BASE, "path": str(tmp_path / "elsewhere" / "m.joblib")}
    with pytest.raises(ConfigError, match=r"field 'path': .* is outside the model repository"):
        load_models(write_models(repo / "models.toml", [outside], root=repo))
    escape = {**BASE, "path": "../elsewhere/m.joblib"}
    with pytest.raises(ConfigError, match="outside the model repository"):
        load_models(write_models(repo / "models.toml", [escape], root=repo))
    (repo / "link.joblib").symlink_to(tmp_path / "elsewhere.joblib")
    with pytest.raises(ConfigError, match="outside the model repository"):
        load_models(write_models(repo / "models.toml", [{**BASE, "path": "link.joblib"}], root=repo))
    inside = load_models(write_models(repo / "models.toml", [{**BASE, "path": "sub/m.joblib"}], root=repo))
    assert inside[0].path == repo / "sub" / "m.joblib"
    # weights read without unpickling (safetensors, weights-only torch) may live anywhere
    weights = {"name": "r", "backend": "echo", "path": str(tmp_path / "elsewhere" / "w.bin")}
    assert load_models(write_models(repo / "models.toml", [weights], root=repo))[0].name == "r"


def test_require_sha256_refuses_unpinned_models(tmp_path: Path) -> None:
    path = write_models(tmp_path / "models.toml", [BASE], require_sha256=True)
    with pytest.raises(ConfigError, match="model 'm': field 'sha256': required"):
        load_models(path)
    pinned = write_models(tmp_path / "models.toml", [{**BASE, "sha256": "a" * 64}], require_sha256=True)
    assert load_models(pinned)[0].sha256 == "a" * 64
