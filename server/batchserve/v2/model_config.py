"""Triton's model configuration, ``GET /v2/models/{name}[/versions/1]/config``: a model's tensors
and its batching settings in the JSON form of Triton's ``model_config.proto``, as
``tritonclient``'s ``get_model_config`` reads it. Tensor dims leave out the batch axis (as
Triton's do when ``max_batch_size`` is above 0); a tensor of one value per item has dims ``[1]``."""

from __future__ import annotations

from typing import Any

from batchserve.registry import ServedModel
from batchserve.v2.codec import Metadata

_TYPES = {"BYTES": "TYPE_STRING"}
"""v2 datatypes whose name in Triton's configuration is not ``TYPE_<datatype>``."""


def model_config(model: ServedModel, metadata: Metadata, platform: str) -> dict[str, Any]:
    """``model``'s configuration; ``metadata``: its tensors (``Codec.metadata``, empty lists while
    it is not loaded)."""
    config = model.config
    kind = "KIND_CPU" if config.device == "cpu" else "KIND_AUTO" if config.device == "auto" else "KIND_GPU"
    return {
        "name": config.name,
        "platform": platform,
        "backend": config.backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(t) for t in metadata["inputs"]],
        "output": [_tensor(t) for t in metadata["outputs"]],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(config.max_wait_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(config.timeout_ms * 1000),
                "allow_timeout_override": True,  # X-Request-Timeout-Ms lowers it
                "max_queue_size": config.max_queue,
            },
        },
        "instance_group": [{"count": config.instances, "kind": kind}],
    }


def _tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    datatype = str(tensor["datatype"])
    return {"name": tensor["name"], "data_type": _TYPES.get(datatype, f"TYPE_{datatype}"),
            "dims": list(tensor["shape"][1:]) or [1]}
