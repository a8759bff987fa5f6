"""A Hugging Face model sized from its ``config.json`` alone: parameters, weights, KV cache, activations.

Nothing is downloaded and no weights are read: the config is read from a local file (or the
``config.json`` of a folder), checked for the fields an estimate needs, turned into a transformers
config (``AutoConfig.for_model``) and the architecture it names is built on the meta device
(``torch.device("meta")``: shapes only, no memory). Its parameters are counted as
``model.parameters()`` yields them, so weights shared between modules (an output head tied to the
input embeddings) count once.

Weights by format (``WEIGHT_FORMATS``): float32 4 bytes a parameter, float16/bfloat16 2; int8 and
int4 are weight-only quantisation of the matrices of the linear layers, every other parameter
(embeddings, norms, biases, the output head) kept in float16, and the scales counted:

- int8: one float16 scale per output row (per-channel, as LLM.int8-style and most int8 GEMM formats);
- int4: groups of 128 input weights, each with a float16 scale and a 4-bit zero point (the
  GPTQ/AWQ layout, group size 128).

KV cache (decoder models): per token ``2 (K and V) x layers x KV heads x head dim x bytes``, with the
config's ``num_key_value_heads`` (grouped-query attention) or, without it, the attention heads.

Activation working memory of one forward pass over ``T`` tokens (an estimate, inference, no
gradients): ``T x bytes x (2 x hidden + max(2 x heads x head_dim + 2 x KV heads x head_dim,
k x intermediate))``, ``k`` 3 for a gated MLP (SwiGLU: gate, up and their product live at once) and
2 otherwise (the projection and its activation): the layer's input and the residual beside the
larger of attention's q, k, v and output or the MLP's intermediates. It assumes a fused attention
kernel (SDPA, flash): eager attention adds its score matrices, ``2 x sequences x heads x
tokens^2 x bytes`` (``eager_attention_bytes``). A decoder adds the logits of each sequence's last
token in float32 (``sequences x vocab x 4``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GROUP_SIZE = 128
"""Input weights per int4 quantisation group (a float16 scale and a 4-bit zero point each)."""
BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float8": 1.0, "int8": 1.0, "int4": 0.5}
WEIGHT_FORMATS = {
    "float32": "4 bytes a parameter",
    "float16": "2 bytes a parameter (bfloat16 the same)",
    "int8": "linear layers' matrices 1 byte a weight + a float16 scale per output row; "
            "embeddings, norms, biases and the output head float16",
    "int4": f"linear layers' matrices 0.5 byte a weight + a float16 scale and a 4-bit zero point per "
            f"group of {GROUP_SIZE} input weights (GPTQ/AWQ); embeddings, norms, biases and the "
            "output head float16",
}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class ModelConfigError(ValueError):
    """A config that can't be sized, naming the file and the field."""


@dataclass(frozen=True)
class ModelShape:
    """What an estimate needs, from the config and the architecture built from it."""

    path: str
    model_type: str
    architecture: str
    decoder: bool
    layers: int
    hidden: int
    intermediate: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool
    tied_embeddings: bool
    parameters: int
    matrix_parameters: int
    """Parameters in the linear layers' matrices (the output head excluded): what int8/int4 quantise."""
    matrix_rows: int
    matrix_groups: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config(path: Path) -> tuple[Path, dict[str, Any]]:
    """The JSON object of ``path`` (a file, or a folder holding ``config.json``)."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} has no config.json" if path.is_dir() else f"{path}: no such file"
        raise ModelConfigError(where)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{file}: can't be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{file}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{file}: not a JSON object (a Hugging Face config.json is one)")
    return file, data


def load_config(path: Path) -> tuple[Path, dict[str, Any], Any]:
    """``path``'s file, its fields and its transformers config, every field an estimate needs
    checked present."""
    from transformers import AutoConfig

    file, data = read_config(path)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelConfigError(f"{file}: no model_type field (the architecture family, e.g. \"llama\")")
    try:
        default = AutoConfig.for_model(model_type)
    except ValueError:
        import transformers

        raise ModelConfigError(f"{file}: model_type {model_type!r} is not an architecture "
                               f"transformers {transformers.__version__} knows") from None
    aliases: dict[str, str] = dict(getattr(type(default), "attribute_map", {}) or {})
    required = [*REQUIRED, *(["intermediate_size"] if hasattr(default, "intermediate_size") else [])]
    for name in required:
        key = name if name in data else aliases.get(name)
        if key not in data:
            alias = f" (or {aliases[name]})" if name in aliases else ""
            raise ModelConfigError(f"{file}: missing field {name}{alias}: the estimate needs it "
                                   "(transformers would put a default in its place)")
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelConfigError(f"{file}: {key} must be a positive integer, not {value!r}")
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in data.items() if k != "model_type"})
    except Exception as exc:  # transformers' validators raise their own types: each names the field
        reason = str(exc).strip().splitlines()
        raise ModelConfigError(f"{file}: transformers refuses it: {' '.join(reason[:3])}") from None
    return file, data, config


def model_shape(path: Path) -> ModelShape:
    """``path``'s config built on the meta device and measured (the module's docstring)."""
    import torch
    import transformers

    file, data, config = load_config(path)
    notes: list[str] = []
    architectures = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    model_class = next((getattr(transformers, a) for a in architectures
                        if isinstance(getattr(transformers, a, None), type)), None)
    if model_class is None:
        notes.append(f"architectures {architectures} unknown to transformers: built AutoModel"
                     if architectures else "no architectures field: built AutoModel (no task head)")
    try:
        with torch.device("meta"):
            model = (model_class(config) if model_class is not None
                     else transformers.AutoModel.from_config(config))  # type: ignore[no-untyped-call]
    except Exception as exc:  # a config transformers accepts but cannot build a model from
        name = model_class.__name__ if model_class is not None else "AutoModel"
        raise ModelConfigError(f"{file}: {name} cannot be built from it: {exc}") from None
    architecture = type(model).__name__
    decoder = architecture.endswith(DECODER_SUFFIXES)
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if "num_key_value_heads" not in data and decoder:
        notes.append("no num_key_value_heads: multi-head attention assumed (KV heads = attention heads)")
    if heads % kv_heads:
        raise ModelConfigError(f"{file}: num_attention_heads {heads} is not a multiple of "
                               f"num_key_value_heads {kv_heads}")
    head_dim = getattr(config, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1:
        if hidden % heads:
            raise ModelConfigError(f"{file}: hidden_size {hidden} is not a multiple of "
                                   f"num_attention_heads {heads}, and there is no head_dim")
        head_dim = hidden // heads
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    return ModelShape(
        path=str(file), model_type=config.model_type, architecture=architecture, decoder=decoder,
        layers=int(config.num_hidden_layers), hidden=hidden, intermediate=intermediate,
        attention_heads=heads, kv_heads=int(kv_heads), head_dim=int(head_dim), vocab=int(config.vocab_size),
        gated_mlp=_gated(model, intermediate, int(config.num_hidden_layers)),
        tied_embeddings=_tied(model), notes=notes, **_count(model))


def _count(model: Any) -> dict[str, int]:
    """Parameters (shared ones once), and those in the linear layers' matrices with their rows and
    int4 groups; embeddings and the output head are not such matrices."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    excluded = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    if head is not None:
        excluded |= {id(p) for p in head.parameters()}
    matrices = rows = groups = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in excluded:
            excluded.add(id(module.weight))
            matrices += module.weight.numel()
            rows += module.out_features
            groups += module.out_features * math.ceil(module.in_features / GROUP_SIZE)
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": int(total), "matrix_parameters": int(matrices), "matrix_rows": int(rows),
            "matrix_groups": int(groups)}


def _gated(model: Any, intermediate: int, layers: int) -> bool:
    """Whether the MLP is gated: two linear layers per layer project into the intermediate size."""
    import torch

    into = sum(1 for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.out_features == intermediate)
    return into >= 2 * layers


def _tied(model: Any) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and inputs is not None and head.weight is inputs.weight


def weight_bytes(shape: ModelShape) -> dict[str, int]:
    """Bytes of the weights in each of ``WEIGHT_FORMATS``."""
    rest = shape.parameters - shape.matrix_parameters
    return {
        "float32": 4 * shape.parameters,
        "float16": 2 * shape.parameters,
        "int8": shape.matrix_parameters + 2 * shape.matrix_rows + 2 * rest,
        "int4": math.ceil(shape.matrix_parameters / 2 + 2.5 * shape.matrix_groups) + 2 * rest,
    }


def kv_bytes_per_token(shape: ModelShape, kv_dtype: str, tensor_parallel: int = 1) -> int:
    """K and V of one token in every layer: ``2 x layers x KV heads x head dim x bytes``; on each of
    ``tensor_parallel`` GPUs its share of the KV heads (a head is never split: with more GPUs than
    KV heads each holds a copy of one)."""
    heads = math.ceil(shape.kv_heads / tensor_parallel)
    return math.ceil(2 * shape.layers * heads * shape.head_dim * BYTES[kv_dtype])


def activation_bytes(shape: ModelShape, tokens: int, dtype: str, sequences: int = 1,
                     tensor_parallel: int = 1) -> int:
    """Working memory of one forward pass over ``tokens`` tokens in all (the module's docstring); on
    each of ``tensor_parallel`` GPUs the hidden states are whole and the heads' and the MLP's
    intermediates split."""
    attention = 2 * shape.attention_heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim
    mlp = (3 if shape.gated_mlp else 2) * shape.intermediate
    per_token = 2 * shape.hidden + max(attention, mlp) / tensor_parallel
    logits = sequences * shape.vocab * 4 if shape.decoder else 0
    return math.ceil(tokens * BYTES[dtype] * per_token) + logits


def eager_attention_bytes(shape: ModelShape, sequences: int, tokens: int, dtype: str) -> int:
    """What eager (unfused) attention adds: one layer's scores and probabilities."""
    return math.ceil(2 * sequences * shape.attention_heads * tokens * tokens * BYTES[dtype])


ACTIVATION_FORMULA = ("tokens x bytes x (2 x hidden + max(2 x (heads + KV heads) x head_dim, "
                      "k x intermediate)), k = 3 gated MLP, 2 otherwise; + sequences x vocab x 4 "
                      "(last-token logits, decoders); fused attention assumed")
