"""A model's versions in models.toml: each loaded version is a config of its own (the model's
fields with its own over them), the version policy picks which, and the starting traffic is
checked; mistakes are refused at start, naming the model and what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batchserve.config import ConfigError, load_models

from tests.support import write_models

BASE: dict[str, Any] = {"name": "m", "backend": "echo", "path": "x", "max_batch_size": 8}
THREE = [{"version": "1"}, {"version": "2", "max_batch_size": 4, "options": {"scale": 3.0}},
         {"version": "3", "path": "y"}]


def load(tmp_path: Path, **changes: Any) -> Any:
    return load_models(write_models(tmp_path / "models.toml", [{**BASE, **changes}]))


def test_each_version_is_the_models_config_with_its_own_fields_over_it(tmp_path: Path) -> None:
    one, two, three = load(tmp_path, versions=THREE)
    assert [c.key for c in (one, two, three)] == ["m:1", "m:2", "m:3"]
    assert {c.name for c in (one, two, three)} == {"m"}
    assert (one.max_batch_size, two.max_batch_size, three.max_batch_size) == (8, 4, 8)
    assert (one.options, two.options) == ({}, {"scale": 3.0})
    assert three.path.name == "y" and one.path.name == "x"
    # no weights given: the latest version takes all the traffic
    assert [c.weight for c in (one, two, three)] == [0.0, 0.0, 1.0]
    [plain] = load(tmp_path)
    assert (plain.key, plain.version, plain.weight, plain.shadow) == ("m", None, None, None)


@pytest.mark.parametrize(("policy", "loaded"), [
    ("all", ["1", "2", "3"]),
    ({"latest": 2}, ["2", "3"]),
    ({"latest": 9}, ["1", "2", "3"]),
    ({"specific": ["3", "1"]}, ["1", "3"]),
])
def test_the_version_policy_picks_what_is_loaded(tmp_path: Path, policy: Any, loaded: list[str]) -> None:
    assert [c.version for c in load(tmp_path, versions=THREE, version_policy=policy)] == loaded


def test_weights_and_shadows_are_the_starting_traffic(tmp_path: Path) -> None:
    configs = load(tmp_path, versions=[{"version": "1", "weight": 0.95}, {"version": "2", "weight": 0.05},
                                       {"version": "3", "shadow": 0.1}])
    assert [(c.weight, c.shadow) for c in configs] == [(0.95, None), (0.05, None), (0.0, 0.1)]


@pytest.mark.parametrize(("changes", "words"), [
    ({"versions": [{"version": "1", "weight": 0.5}, {"version": "2", "weight": 0.4}]},
     "weights must sum to 1 (a whole)"),
    ({"versions": [{"version": "1", "weight": -0.5}]}, "greater than or equal to 0"),
    ({"versions": [{"version": "1"}, {"version": "1"}]}, "duplicate version names"),
    ({"versions": [{"version": "1", "weight": 1.0, "shadow": 0.5}]}, "give 'weight' or 'shadow'"),
    ({"versions": [{"version": "1", "shadow": 0.5}]}, "every loaded version is a shadow"),
    ({"versions": [{"version": "1", "name": "n"}]}, "may not set 'name'"),
    ({"versions": [{"version": "a b"}]}, "should match pattern"),
    ({"versions": []}, "non-empty list"),
    ({"versions": THREE, "version_policy": {"specific": ["4"]}},
     "names versions ['4'] that are not declared"),
    ({"versions": THREE, "version_policy": "some"}, "must be \"all\", { latest = N }"),
    ({"versions": [{"version": "1", "weight": 1.0}, {"version": "2"}], "version_policy": {"latest": 1}},
     "have a weight but the version_policy does not load them"),
    ({"version_policy": {"latest": 1}}, "the model declares no 'versions'"),
    ({"weight": 1.0}, "set on a version ('versions'), not on the model"),
    ({"versions": [{"version": "1", "max_batch_size": 0}]}, "model 'm' version '1': field 'max_batch_size'"),
])
def test_mistakes_are_refused_naming_what_is_wrong(tmp_path: Path, changes: dict[str, Any],
                                                  words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, **changes)
    assert "model 'm'" in str(raised.value) and words in str(raised.value), str(raised.value)
