"""The model repository file (``models.toml``): one ``[[models]]`` table per model.

Everything is validated when the server starts; a mistake is reported with the
file, the model and the field, so the operator can fix it without guessing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchserve.backends import backend_class
from batchserve.errors import describe_validation_errors
from batchserve.versions import expand

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEVICE = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class ModelConfig(BaseModel):
    """One served model and how its batcher behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """URL-safe name used in ``/predict/{name}`` and in metric labels."""
    backend: str
    """Short backend name (``sklearn``, ``resnet50``, ``transformer``) or an entry point."""
    path: Path
    """Artifact to load; relative paths are resolved against the config file's folder."""
    sha256: str | None = None
    """Hex digest the artifact must have; a mismatch refuses to load it."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    max_batch_size: int = Field(default=32, ge=1, le=65536)
    """Most rows in one call of the backend's ``predict_batch``."""
    max_wait_ms: float = Field(default=0.0, ge=0, le=60_000)
    """Longest a partial batch may wait for company (see docs/batching.md, "When a batch goes")."""
    max_queue: int = Field(default=1024, ge=1)
    """Most rows waiting; beyond that requests are refused with 503."""
    timeout_ms: float = Field(default=10_000, gt=0)
    """Default deadline of a request; ``X-Request-Timeout-Ms`` can only lower it."""
    instances: int = Field(default=1, ge=1, le=64)
    """Batches that may run at once (each on its own thread)."""
    preprocess_concurrency: int | None = Field(default=None, ge=1, le=1024)
    """Requests whose items may be preprocessed at once, for backends whose preprocessing is
    heavy (image decoding, on worker threads); default: the CPUs this process may use."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific settings, validated by the backend's ``Options`` model."""
    version: str | None = None
    """The version of ``name`` this is, for a model that declares ``versions`` (``versions.py``);
    ``None`` for a model that declares none (served as version "1", as always)."""
    weight: float | None = Field(default=None, ge=0, le=1)
    """A version's share of its model's traffic when the server starts (``routing.py``)."""
    shadow: float | None = Field(default=None, gt=0, le=1)
    """A shadow version's fraction of the traffic, copied to it after the answer (``shadow.py``)."""

    @property
    def key(self) -> str:
        """What the registry serves this under: the name, or ``name:version`` for a version."""
        return self.name if self.version is None else f"{self.name}:{self.version}"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-128 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be 'cpu', 'cuda', 'cuda:N' or 'auto'")
        return value

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be 64 hexadecimal characters")
        return value.lower() if value else value


class RepositorySettings(BaseModel):
    """The optional ``[repository]`` table."""

    model_config = ConfigDict(extra="forbid")

    root: Path | None = None
    """The model directory; default: the folder of models.toml. Relative: against that folder.
    Backends that unpickle (sklearn/joblib) load only from inside it."""
    require_sha256: bool = False
    """Refuse to start unless every model pins its artifact's ``sha256`` (the container's default)."""


class _RepositoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    models: list[dict[str, Any]] = Field(min_length=1)


def parse_models(data: dict[str, Any], *, source: Path) -> list[ModelConfig]:
    """Validate a decoded repository file; relative paths resolve against ``source``'s folder."""
    where = str(source)
    try:
        repo = _RepositoryFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe_validation_errors(exc.errors())}") from None
    root = _root(source, repo.repository)
    configs: list[ModelConfig] = []
    seen: set[Any] = set()
    for index, model_table in enumerate(repo.models):
        label = f"model '{model_table.get('name', f'#{index}')}'"
        try:
            tables = expand(model_table)
        except ValueError as exc:
            raise ConfigError(f"{where}: {label}: {exc}") from None
        if model_table.get("name") in seen:
            raise ConfigError(f"{where}: {label}: field 'name': duplicate model name")
        seen.add(model_table.get("name"))
        for table in tables:
            configs.append(_model(table, repo.repository, where=where, source=source, root=root))
    return configs


def _model(table: dict[str, Any], repository: RepositorySettings, *, where: str, source: Path,
           root: Path) -> ModelConfig:
    """One model table (one version's, for a model with versions), validated."""
    label = f"model '{table.get('name', '?')}'"
    if table.get("version") is not None:
        label += f" version '{table['version']}'"
    try:
        config = ModelConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {label}: {describe_validation_errors(exc.errors())}") from None
    try:
        cls = backend_class(config.backend)
    except LookupError as exc:
        raise ConfigError(f"{where}: {label}: field 'backend': {exc}") from None
    try:
        cls.Options.model_validate(config.options)
    except ValidationError as exc:
        problems = describe_validation_errors(exc.errors(), "options.")
        raise ConfigError(f"{where}: {label}: {problems}") from None
    if not config.path.is_absolute():
        config = config.model_copy(update={"path": (source.parent / config.path).resolve()})
    if cls.loads_pickles and not config.path.resolve().is_relative_to(root):
        raise ConfigError(
            f"{where}: {label}: field 'path': {config.path} is outside the model repository "
            f"{root}; the {config.backend} backend unpickles its artifact, so it loads only from "
            "inside the repository ([repository] root)")
    if repository.require_sha256 and config.sha256 is None:
        raise ConfigError(f"{where}: {label}: field 'sha256': required, as [repository] "
                          "require_sha256 = true; `batchserve sha256 PATH` prints it")
    return config


def _root(source: Path, repository: RepositorySettings) -> Path:
    return (source.parent / (repository.root or ".")).resolve()


def repository_root(path: Path) -> Path:
    """The model repository's root folder, as the ``models.toml`` at ``path`` sets it (its own
    folder where it sets none, or cannot be read)."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("repository", {})
        return _root(path, RepositorySettings.model_validate(table))
    except (OSError, ValueError):  # tomllib's and pydantic's errors are ValueErrors
        return path.parent.resolve()


def load_models(path: Path) -> list[ModelConfig]:
    """Read and validate a ``models.toml``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_models(data, source=path)

