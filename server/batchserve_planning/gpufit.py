"""Which GPUs a model sized from its config fits on, how many of them, and at what price.

For each hardware profile with GPUs (``gpu_memory_gib``, ``gpus``: ``hardware.py``) and each weight
format, the model is split tensor-parallel over ``n`` of the profile's GPUs, the least ``n`` that
holds, on every GPU:

    weights / n + KV cache of the sequences (its share of the KV heads) + activations of one forward
    pass (``configsize.activation_bytes``) + ``overhead_bytes``

within the GPU's memory. ``n`` must divide the attention heads, and the KV heads or be a multiple of
them (how tensor parallelism splits heads). The overhead (``DEFAULT_OVERHEAD_GIB``) is what a GPU
holds besides the model: the CUDA context and libraries, cuBLAS and NCCL workspaces, the
allocator's fragmentation; an assumption, not measured here. $/hour is the profile's price for the
``n`` GPUs used: its price x ``n`` / its GPUs (providers rent 1, 2, 4 or 8 GPUs of a kind at about
that rate per GPU). With ``n`` found, ``max_sequences`` is how many sequences of the context fit on
those ``n`` GPUs beside the weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from batchserve_planning.configsize import (
    ModelShape,
    activation_bytes,
    kv_bytes_per_token,
    weight_bytes,
)
from batchserve_planning.modelsize import format_bytes

if TYPE_CHECKING:
    from batchserve_planning.hardware import Profile

DEFAULT_OVERHEAD_GIB = 1.5
"""Per GPU: CUDA context (~0.5 GiB), cuBLAS/NCCL workspaces and allocator fragmentation."""
COMPUTE_DTYPE = {"float32": "float32", "float16": "float16", "int8": "float16", "int4": "float16"}
"""Activations' dtype by weight format: weight-only int8/int4 compute in float16."""


def tensor_parallel_sizes(shape: ModelShape, gpus: int) -> list[int]:
    """GPU counts up to ``gpus`` that split the model's heads evenly."""
    return [n for n in range(1, gpus + 1) if shape.attention_heads % n == 0
            and (shape.kv_heads % n == 0 or n % shape.kv_heads == 0)]


def per_gpu_bytes(shape: ModelShape, weight_format: str, n: int, *, context: int, sequences: int,
                  kv_dtype: str, batch_tokens: int, overhead_bytes: int) -> dict[str, int]:
    """What one of ``n`` GPUs holds, by part."""
    weights = math.ceil(weight_bytes(shape)[weight_format] / n)
    kv = kv_bytes_per_token(shape, kv_dtype, n) * context * sequences if shape.decoder else 0
    activations = activation_bytes(shape, batch_tokens, COMPUTE_DTYPE[weight_format], sequences, n)
    return {"weights": weights, "kv_cache": kv, "activations": activations, "overhead": overhead_bytes,
            "total": weights + kv + activations + overhead_bytes}


def fit(shape: ModelShape, profile: Profile, weight_format: str, *, context: int, sequences: list[int],
        kv_dtype: str, batch_tokens: int, overhead_bytes: int) -> dict[str, Any]:
    """One profile and format: the least GPUs for the weights alone and for each count of sequences."""
    memory = profile.gpu_memory_bytes
    if memory is None:
        raise ValueError(f"profile {profile.name!r} has no gpu_memory_gib")
    sizes = tensor_parallel_sizes(shape, profile.gpus)

    def least(count: int) -> tuple[int | None, dict[str, int] | None]:
        for n in sizes:
            parts = per_gpu_bytes(shape, weight_format, n, context=context, sequences=count,
                                  kv_dtype=kv_dtype, batch_tokens=batch_tokens,
                                  overhead_bytes=overhead_bytes)
            if parts["total"] <= memory:
                return n, parts
        return None, None

    weights_only = least(0)[0]
    rows = []
    for count in sequences:
        n, parts = least(count)
        row: dict[str, Any] = {"sequences": count, "gpus": n, "per_gpu_bytes": parts}
        if n is None:
            row["reason"] = (f"does not fit on {profile.gpus} GPU{'s' if profile.gpus > 1 else ''} "
                             f"of {memory / 2**30:g} GiB")
            row["max_sequences"] = row["price_per_hour"] = None
        else:
            row["max_sequences"] = max_sequences(shape, weight_format, n, memory, context=context,
                                                 kv_dtype=kv_dtype, batch_tokens=batch_tokens,
                                                 overhead_bytes=overhead_bytes)
            row["price_per_hour"] = round(profile.price_per_hour * n / profile.gpus, 6)
        rows.append(row)
    weights = weight_bytes(shape)[weight_format]
    return {"profile": profile.name, "gpu_memory_bytes": memory, "gpus": profile.gpus,
            "price_per_hour": profile.price_per_hour, "price_is_example": profile.price_is_example,
            "format": weight_format, "weight_bytes": weights,
            "weights_fit_one_gpu": weights + overhead_bytes <= memory,
            "gpus_for_weights": weights_only, "by_sequences": rows}


def max_sequences(shape: ModelShape, weight_format: str, n: int, memory: int, *, context: int,
                  kv_dtype: str, batch_tokens: int, overhead_bytes: int) -> int | None:
    """Sequences of ``context`` tokens that fit on ``n`` GPUs beside the weights (None: no KV cache,
    an encoder, so no bound from it)."""
    if not shape.decoder:
        return None

    def total(count: int) -> int:
        return per_gpu_bytes(shape, weight_format, n, context=context, sequences=count, kv_dtype=kv_dtype,
                             batch_tokens=batch_tokens, overhead_bytes=overhead_bytes)["total"]

    base, one = total(0), total(1) - total(0)
    return max(0, (memory - base) // one)


def fit_all(shape: ModelShape, profiles: list[Profile], formats: list[str], **options: Any) -> dict[str, Any]:
    """Every GPU profile x format (profiles without ``gpu_memory_gib`` are listed as skipped)."""
    rows = [fit(shape, profile, weight_format, **options)
            for profile in profiles if profile.gpu_memory_bytes is not None for weight_format in formats]
    skipped = [p.name for p in profiles if p.gpu_memory_bytes is None]
    return {"rows": rows, "skipped": skipped, "assumptions": __doc__}


def fit_lines(table: dict[str, Any], sequences: list[int]) -> list[str]:
    """A markdown table: a row per profile and format, a column per count of sequences."""
    lines = ["| GPU | format | weights | GPUs for the weights | "
             + " | ".join(f"{n} sequence{'s' if n > 1 else ''}" for n in sequences) + " |",
             "|---" * (4 + len(sequences)) + "|"]
    for row in table["rows"]:
        gpu = f"{row['profile']} ({row['gpus']} x {row['gpu_memory_bytes'] / 2**30:g} GiB)"
        weights_gpus = row["gpus_for_weights"]
        cells = [_cell(cell, row["price_is_example"]) for cell in row["by_sequences"]]
        lines.append(f"| {gpu} | {row['format']} | {format_bytes(row['weight_bytes'])} | "
                     f"{weights_gpus if weights_gpus else 'no fit'} | " + " | ".join(cells) + " |")
    if table["skipped"]:
        lines.append(f"(no gpu_memory_gib, not sized: {', '.join(table['skipped'])})")
    return lines


def _cell(cell: dict[str, Any], example: bool) -> str:
    if cell["gpus"] is None:
        return "no fit"
    room = "" if cell["max_sequences"] is None else f", room for {cell['max_sequences']:,}"
    price = f"${cell['price_per_hour']:,.2f}/h{'*' if example else ''}"
    return f"{cell['gpus']} GPU{'s' if cell['gpus'] > 1 else ''}{room}, {price}"
