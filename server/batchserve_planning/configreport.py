"""``batchserve inspect --model-config PATH``: a model sized from its config alone, and on which GPUs.

The figures and their formulas are ``configsize.py``'s (parameters, weights by format, KV cache,
activations) and ``gpufit.py``'s (GPUs per hardware profile, $/hour).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from batchserve_planning.modelsize import format_bytes as _bytes

KV_DTYPES = ("float16", "bfloat16", "float32", "float8", "int8")
FORMATS = ("float32", "float16", "int8", "int4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sizing from a config (--model-config; no weights read)")
    group.add_argument("--model-config", type=Path,
                       help="a Hugging Face config.json, or a folder holding one: size the model from it "
                            "(built on the meta device; nothing loaded or downloaded)")
    group.add_argument("--context", type=int, default=4096, help="tokens per sequence (4096)")
    group.add_argument("--sequences", default="1,8,32",
                       help="sequences at once, comma-separated (1,8,32)")
    group.add_argument("--kv-dtype", choices=KV_DTYPES, default="float16", help="KV cache dtype (float16)")
    group.add_argument("--batch-tokens", type=int,
                       help="tokens in one forward pass, for activations (the context: one sequence's "
                            "prefill)")
    group.add_argument("--formats", default="float16,int8,int4",
                       help=f"weight formats for --hardware, comma-separated, of {','.join(FORMATS)} "
                            "(float16,int8,int4)")
    group.add_argument("--hardware", type=Path,
                       help="hardware profiles (TOML) with gpu_memory_gib and gpus: GPUs needed and $/hour")
    group.add_argument("--overhead-gib", type=float, help="per-GPU runtime overhead in GiB (1.5)")


def _positive_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, not {text!r}") from None
    if min(values) < 1:
        raise ValueError(f"{flag}: values must be positive, not {min(values)}")
    return values


def estimate(path: Path, *, context: int, sequences: list[int], kv_dtype: str,
             batch_tokens: int | None = None) -> dict[str, Any]:
    """Parameters, weights by format, KV cache and activations of ``path``'s config."""
    from batchserve_planning.configsize import (
        ACTIVATION_FORMULA,
        WEIGHT_FORMATS,
        activation_bytes,
        eager_attention_bytes,
        kv_bytes_per_token,
        model_shape,
        weight_bytes,
    )

    if context < 1:
        raise ValueError(f"--context must be positive, not {context}")
    shape = model_shape(path)
    tokens = batch_tokens or context
    report: dict[str, Any] = {
        "config": shape.path, "shape": shape.to_dict(), "parameters": shape.parameters,
        "weight_bytes": weight_bytes(shape), "weight_formats": WEIGHT_FORMATS,
        "context": context, "sequences": sequences, "kv_dtype": kv_dtype, "batch_tokens": tokens,
        "activations": [{"sequences": n, "tokens": tokens,
                         "bytes": {d: activation_bytes(shape, tokens, d, n) for d in ("float32", "float16")},
                         "eager_attention_float16_bytes": eager_attention_bytes(
                             shape, 1, min(tokens, context), "float16")}
                        for n in sequences],
        "activation_formula": ACTIVATION_FORMULA}
    if shape.decoder:
        per_token = kv_bytes_per_token(shape, kv_dtype)
        report["kv_cache"] = {
            "formula": "2 x layers x KV heads x head_dim x bytes per token",
            "per_token_bytes": per_token, "per_sequence_bytes": per_token * context,
            "by_sequences": {str(n): per_token * context * n for n in sequences}}
    return report


def run(args: argparse.Namespace) -> int:
    """The ``--model-config`` branch of ``inspect``'s ``run``; raises ValueError-based errors."""
    import json

    from batchserve_planning.gpufit import DEFAULT_OVERHEAD_GIB, fit_all
    from batchserve_planning.hardware import GIB, load_profiles

    sequences = _positive_list(args.sequences, "--sequences")
    formats = args.formats.split(",")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"--formats: {unknown} unknown; known: {', '.join(FORMATS)}")
    if args.batch_tokens is not None and args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be positive, not {args.batch_tokens}")
    overhead = DEFAULT_OVERHEAD_GIB if args.overhead_gib is None else args.overhead_gib
    if overhead < 0:
        raise ValueError(f"--overhead-gib must be >= 0, not {overhead}")
    profiles = load_profiles(args.hardware) if args.hardware is not None else None
    report = estimate(args.model_config, context=args.context, sequences=sequences,
                      kv_dtype=args.kv_dtype, batch_tokens=args.batch_tokens)
    if profiles is not None:
        from batchserve_planning.configsize import ModelShape

        shape = ModelShape(**report["shape"])
        report["hardware"] = {"file": str(args.hardware), "overhead_gib": overhead, **fit_all(
            shape, profiles, formats, context=args.context, sequences=sequences, kv_dtype=args.kv_dtype,
            batch_tokens=report["batch_tokens"], overhead_bytes=int(overhead * GIB))}
    print(json.dumps(report, indent=2) if args.json else "\n".join(format_lines(report)))
    return 0


def format_lines(report: dict[str, Any]) -> list[str]:
    shape = report["shape"]
    gqa = (f", {shape['kv_heads']} KV heads (grouped-query)" if shape["kv_heads"] != shape["attention_heads"]
           else "")
    lines = [f"{shape['architecture']} from {report['config']} (built on the meta device; no weights read)",
             f"{shape['layers']} layers, hidden {shape['hidden']}, intermediate {shape['intermediate']}"
             f"{' (gated)' if shape['gated_mlp'] else ''}, {shape['attention_heads']} heads of "
             f"{shape['head_dim']}{gqa}, vocabulary {shape['vocab']:,}"
             f"{', output head tied to the embeddings' if shape['tied_embeddings'] else ''}",
             f"parameters: {report['parameters']:,} ({shape['matrix_parameters']:,} in linear layers' "
             "matrices)", "weights:"]
    for name, count in report["weight_bytes"].items():
        lines.append(f"- {name}: {_bytes(count)} ({count / report['parameters']:.3f} bytes a parameter; "
                     f"{report['weight_formats'][name]})")
    lines += [f"- note: {note}" for note in shape["notes"]]
    if "kv_cache" in report:
        kv = report["kv_cache"]
        lines.append(f"KV cache ({report['kv_dtype']}; {kv['formula']}): {_bytes(kv['per_token_bytes'])} a "
                     f"token, {_bytes(kv['per_sequence_bytes'])} a sequence of {report['context']:,} tokens; "
                     + ", ".join(f"{n} sequence{'s' if int(n) > 1 else ''} {_bytes(b)}"
                               for n, b in kv["by_sequences"].items()))
    else:
        lines.append("KV cache: none (not a decoder: no tokens are generated one by one)")
    lines.append(f"activations, estimated, one forward pass of {report['batch_tokens']:,} tokens "
                 f"({report['activation_formula']}):")
    for row in report["activations"]:
        lines.append(f"- {row['sequences']} sequence{'s' if row['sequences'] > 1 else ''}: float16 "
                     f"{_bytes(row['bytes']['float16'])}, float32 {_bytes(row['bytes']['float32'])} "
                     f"(eager attention adds {_bytes(row['eager_attention_float16_bytes'])} in float16)")
    if "hardware" in report:
        from batchserve_planning.gpufit import fit_lines

        hardware = report["hardware"]
        lines += ["", f"GPUs from {hardware['file']} ({report['context']:,} tokens of context, KV cache "
                      f"{report['kv_dtype']}, {hardware['overhead_gib']:g} GiB runtime overhead a GPU; "
                      "tensor-parallel; * an example price):", *fit_lines(hardware, report["sequences"])]
    return lines
