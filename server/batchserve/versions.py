"""A model's versions in ``models.toml``: ``[[models.versions]]`` tables, a ``version_policy``,
and the traffic each version starts with (its ``weight``, or its ``shadow`` fraction).

A model table with versions is expanded into one ``ModelConfig`` per version that the policy
loads: the model's own fields, with the version's over them. Each is served on its own (its
own backend, batcher and metrics, labelled ``version``); ``routing.py`` resolves a request for
the model to one of them::

    [[models]]
    name = "diabetes"
    backend = "sklearn"
    path = "artifacts/diabetes.joblib"
    version_policy = { latest = 2 }        # or "all" (the default), or { specific = ["1", "3"] }
    versions = [
      { version = "1", weight = 0.9 },
      { version = "2", path = "artifacts/diabetes_v2.joblib", weight = 0.1 },
    ]

Versions are listed oldest first; ``latest = N`` loads the last N. Weights are fractions of the
model's traffic over the loaded versions and sum to 1; where none is given, the latest loaded
version that is not a shadow takes it all. A ``shadow`` (a fraction in (0, 1]) takes no traffic
of its own: that fraction of the requests answered by the others is also run on it, and its
outputs compared with theirs (``shadow.py``).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batchserve.errors import describe_validation_errors

WEIGHT_TOLERANCE = 1e-6
"""How far from 1 the weights' sum may be (fractions written in decimal don't add up exactly)."""


class VersionPolicy(BaseModel):
    """Which versions are loaded: every one, the latest N, or the ones named."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latest: int | None = Field(default=None, ge=1)
    specific: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        if self.latest is not None and self.specific is not None:
            raise ValueError("give 'latest' or 'specific', not both")
        return self

    def select(self, versions: list[str]) -> list[str]:
        if self.latest is not None:
            return versions[-self.latest:]
        if self.specific is not None:
            unknown = [v for v in self.specific if v not in versions]
            if unknown:
                raise ValueError(f"names versions {unknown} that are not declared; declared: {versions}")
            return [v for v in versions if v in self.specific]
        return list(versions)


class VersionTable(BaseModel):
    """One ``[[models.versions]]`` entry: its name, its traffic, and the model's fields it changes
    (any but ``name``; checked with the model's, once merged)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    weight: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    shadow: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_both(self) -> VersionTable:
        if self.weight and self.shadow is not None:
            raise ValueError("a shadow takes no traffic of its own: give 'weight' or 'shadow', not both")
        if self.model_extra and ({"name", "versions", "version_policy"} & self.model_extra.keys()):
            raise ValueError("a version may not set 'name', 'versions' or 'version_policy'")
        return self


def expand(table: dict[str, Any]) -> list[dict[str, Any]]:
    """A model table as the tables of the versions it loads (itself, when it declares none); each
    carries ``version``, ``weight`` (0 for all but the versions that take traffic) and
    ``shadow``. A ``ValueError`` says what is wrong."""
    if "versions" not in table:
        if "version_policy" in table:
            raise ValueError("field 'version_policy': the model declares no 'versions'")
        for field in ("version", "weight", "shadow"):
            if field in table:
                raise ValueError(f"field {field!r}: set on a version ('versions'), not on the model")
        return [table]
    base = {k: v for k, v in table.items() if k not in ("versions", "version_policy")}
    try:
        policy = VersionPolicy.model_validate(_policy(table.get("version_policy", "all")))
        if not isinstance(table["versions"], list) or not table["versions"]:
            raise ValueError("field 'versions': must be a non-empty list of tables")
        versions = [VersionTable.model_validate(v) for v in table["versions"]]
    except ValidationError as exc:
        raise ValueError(describe_validation_errors(exc.errors())) from None
    names = [v.version for v in versions]
    if len(set(names)) != len(names):
        raise ValueError(f"field 'versions': duplicate version names in {names}")
    try:
        loaded = set(policy.select(names))
    except ValueError as exc:
        raise ValueError(f"field 'version_policy': {exc}") from None
    chosen = [v for v in versions if v.version in loaded]
    unloaded = [v.version for v in versions if v.version not in loaded and v.weight]
    if unloaded:
        raise ValueError(f"versions {unloaded} have a weight but the version_policy does not load them")
    weights = _weights(chosen)
    return [{**base, **(v.model_extra or {}), "version": v.version, "weight": weights[v.version],
             "shadow": v.shadow} for v in chosen]


def _policy(value: Any) -> Any:
    if value == "all":
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError("field 'version_policy': must be \"all\", { latest = N } or { specific = [...] }")


def _weights(versions: list[VersionTable]) -> dict[str, float]:
    given = {v.version: v.weight for v in versions if v.weight is not None}
    if not given:
        primaries = [v.version for v in versions if v.shadow is None]
        if not primaries:
            raise ValueError("every loaded version is a shadow: one must take the traffic")
        return {v.version: 1.0 if v.version == primaries[-1] else 0.0 for v in versions}
    check_sum(given)
    return {v.version: given.get(v.version, 0.0) for v in versions}


def check_sum(weights: dict[str, float]) -> None:
    """Weights must be finite, not negative, and sum to 1 (a whole)."""
    bad = {v: w for v, w in weights.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise ValueError(f"weights must be finite numbers >= 0; got {bad}")
    total = sum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"weights must sum to 1 (a whole); {weights} sum to {total:g}")


def one_version(table: dict[str, Any], version: str) -> dict[str, Any]:
    """A model table with versions as the model with ``version`` alone (declared, whatever the
    policy loads): the model's fields with the version's over them, and ``versions`` that one
    (with all the traffic). What the planner serves to measure one version (``--version``)."""
    declared = table.get("versions")
    if not isinstance(declared, list) or not declared:
        raise ValueError(f"model {table.get('name')!r} declares no versions: give no --version")
    found = next((v for v in declared if isinstance(v, dict) and v.get("version") == version), None)
    if found is None:
        names = [v.get("version") for v in declared if isinstance(v, dict)]
        raise ValueError(f"model {table.get('name')!r} has no version {version!r}; its versions: {names}")
    own = {k: v for k, v in found.items() if k not in ("version", "weight", "shadow")}
    base = {k: v for k, v in table.items() if k not in ("versions", "version_policy")}
    return {**base, **own, "versions": [{"version": version}]}
