"""Server settings: flags override BATCHSERVE_* environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchserve.settings import ServerSettings
from pydantic import ValidationError


def test_defaults_bind_loopback() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.config) == ("127.0.0.1", 8000,
                                                               Path("models/models.toml"))


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_PORT", "9001")
    monkeypatch.setenv("BATCHSERVE_SHUTDOWN_GRACE_S", "5")
    monkeypatch.setenv("BATCHSERVE_LOG_LEVEL", "debug")
    settings = ServerSettings()
    assert (settings.port, settings.shutdown_grace_s, settings.log_level) == (9001, 5.0, "debug")
    assert ServerSettings(port=9002).port == 9002


def test_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        ServerSettings()


def test_strict_readiness_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().strict_readiness is True
    monkeypatch.setenv("BATCHSERVE_STRICT_READINESS", "false")
    assert ServerSettings().strict_readiness is False


def test_the_access_log_is_off_unless_turned_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().access_log is False
    monkeypatch.setenv("BATCHSERVE_ACCESS_LOG", "true")
    assert ServerSettings().access_log is True
