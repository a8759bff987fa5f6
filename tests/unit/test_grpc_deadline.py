"""A gRPC call's deadline becomes its request's timeout (REST's ``X-Request-Timeout-Ms``), read
from the call as the service reads it; the model's ``timeout_ms`` caps it later, in the pipeline.
The call is a fake with the two things read from it: its metadata and the time it has left."""

from __future__ import annotations

from typing import Any

import pytest
from batchserve.grpc_api.service import _headers


class FakeCall:
    def __init__(self, remaining_s: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.remaining_s = remaining_s
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining_s


def _timeout_ms(call: Any) -> float | None:
    headers = _headers(call, 123)
    assert headers.content_length == b"123"  # the message's size, as a body's length
    return None if headers.timeout_ms is None else float(headers.timeout_ms)


def test_the_calls_deadline_is_the_requests_timeout() -> None:
    assert _timeout_ms(FakeCall(0.25)) == pytest.approx(250.0)
    assert _timeout_ms(FakeCall(None)) is None  # no deadline: the model's timeout_ms alone


def test_a_shorter_timeout_in_the_metadata_wins_and_a_longer_or_malformed_one_does_not() -> None:
    assert _timeout_ms(FakeCall(5.0, (("x-request-timeout-ms", "40"),))) == pytest.approx(40.0)
    assert _timeout_ms(FakeCall(0.5, (("x-request-timeout-ms", "9000"),))) == pytest.approx(500.0)
    assert _timeout_ms(FakeCall(0.5, (("x-request-timeout-ms", "soon"),))) == pytest.approx(500.0)
    # without a deadline the metadata is the request's, checked as REST checks the header (422)
    headers = _headers(FakeCall(None, (("x-request-timeout-ms", "soon"),)), 1)  # type: ignore[arg-type]
    assert headers.timeout_ms == b"soon"


def test_a_deadline_already_passed_is_one_that_ends_at_once() -> None:
    timeout = _timeout_ms(FakeCall(-1.0))
    assert timeout is not None and 0 < timeout < 0.01
