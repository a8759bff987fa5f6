"""batchserve's own inference.proto against the protocol's definitions as tritonclient.grpc ships
them: every field we declare has the number, type and cardinality of Triton's field of that name,
every enum value its number, every RPC its messages and streaming. What tritonclient (and KServe's
client, generated from the same protocol) sends and reads is therefore what we parse and write."""

from __future__ import annotations

from typing import Any

import pytest
from batchserve.grpc_api import inference_pb2 as ours
from batchserve.grpc_api.service import SERVICE

triton = pytest.importorskip("tritonclient.grpc")


def _theirs(name: str) -> Any:
    for module in (triton.service_pb2, triton.model_config_pb2):
        if name in module.DESCRIPTOR.message_types_by_name:
            return module.DESCRIPTOR.message_types_by_name[name]
    raise AssertionError(f"tritonclient has no message {name}")


def _same(mine: Any, theirs: Any, path: str) -> int:
    """Fields compared in ``mine`` and the messages it holds."""
    compared = 0
    for field in mine.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{path}.{field.name}: not in tritonclient's {theirs.full_name}"
        mine_kind = (field.number, field.type, field.is_repeated)
        assert mine_kind == (other.number, other.type, other.is_repeated), f"{path}.{field.name}"
        compared += 1
        if field.message_type is not None:
            compared += _same(field.message_type, other.message_type, f"{path}.{field.name}")
        if field.enum_type is not None:
            theirs_values = {v.name: v.number for v in other.enum_type.values}
            for value in field.enum_type.values:
                assert theirs_values[value.name] == value.number, f"{path}.{field.name}={value.name}"
    return compared


def test_every_message_matches_tritonclients_field_by_field() -> None:
    compared = sum(_same(message, _theirs(name), name)
                   for name, message in ours.DESCRIPTOR.message_types_by_name.items())
    assert compared > 100  # the messages were walked, nested ones included


def test_every_rpc_takes_and_answers_tritonclients_messages() -> None:
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == SERVICE  # the name the server registers its handlers under
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (other.input_type.name,
                                                                   other.output_type.name), method.name
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming,
                                                                      other.server_streaming)
