"""Sentence embeddings from a Hugging Face encoder (``AutoModel``), pooled the way
sentence-transformers pools them.

``path`` is a sentence-transformers folder (``modules.json``: Transformer, Pooling, optionally
Normalize; the pooling mode from ``1_Pooling/config.json``, ``max_seq_length`` and
``do_lower_case`` from ``sentence_bert_config.json``), or a plain ``save_pretrained`` folder with
``options.pooling`` given. Options given override what the folder says. Nothing is downloaded.

An item is a string, ``{"text": string}`` or ``{"tokens": [ids]}`` (the model's own token ids,
special tokens included, as its tokenizer gives them); the output is the item's vector, a plain
JSON array of floats (an ``Embedding``, which also carries how many tokens the item took).
``parameters = {"dimensions": n}`` cuts each vector to its first ``n`` values (renormalised when
the model normalises), for models trained for it (``options.dimensions`` lists the sizes
allowed). Texts are tokenised, grouped by length and bounded by ``max_batch_tokens`` per
forward call as the classifier's are (``backends/text.py``); pooling and normalisation run in
float32 whatever the dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from batchserve.backends.base import Backend, LoadError, cause
from batchserve.backends.embedding_requests import (
    EmbeddingFields,
    EmbeddingRequests,
    Passage,
    Pooling,
    cut,
)
from batchserve.backends.kinds import Embedding
from batchserve.backends.text import (
    TextModelParts,
    TextOptions,
    check_folder,
    check_max_length,
    check_quantize,
    check_token_budget,
    encoder,
    load_tokenizer,
    pad,
    pad_id,
    quantize_int8,
    run_groups,
)
from batchserve.backends.torch_common import resolve_device, resolve_dtype, set_threads, warmup_sizes

if TYPE_CHECKING:
    import torch

_POOLING_KEYS: dict[str, Pooling | None] = {
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None, "pooling_mode_lasttoken": None,
}
"""sentence-transformers' pooling flags; ``None``: a mode this backend does not implement."""


class EmbeddingOptions(TextOptions, EmbeddingFields):
    """The torch embedder's options."""


class Layout(NamedTuple):
    """What a model folder says about how to embed with it."""

    transformer: Path
    pooling: Pooling
    normalize: bool
    max_length: int | None
    lower_case: bool


class EmbeddingBackend(TextModelParts, EmbeddingRequests, Backend[Passage, Embedding]):
    Options = EmbeddingOptions
    input_kind = "text"

    def load(self, device: str) -> None:
        options: EmbeddingOptions = self.options
        target = resolve_device(device)
        dtype = resolve_dtype(options.dtype, target)
        check_quantize(options, target)
        set_threads(options, target, self.config.instances)
        root = Path(self.config.path)
        check_folder(root, "embedding")
        layout = read_layout(root, options)
        tokenizer = load_tokenizer(layout.transformer)
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(layout.transformer, local_files_only=True)
        except Exception as exc:
            raise LoadError(f"cannot load an encoder model from {layout.transformer}: {cause(exc)}") from None
        positions = getattr(model.config, "max_position_embeddings", None)
        limit = getattr(tokenizer, "model_max_length", None)
        fallbacks = [n for n in (positions, limit) if isinstance(n, int) and n < 1_000_000]
        max_length = layout.max_length or min(fallbacks, default=512)
        check_max_length(model.config, max_length)
        check_token_budget(options, max_length)
        self._size = int(model.config.hidden_size)
        self.check_dimensions()
        pad_token = pad_id(tokenizer, model.config)
        model.eval()
        model.to(device=target, dtype=dtype)
        if options.quantize == "int8":
            model = quantize_int8(model)
        self._layout = layout._replace(max_length=max_length)
        self._vocab = int(model.config.vocab_size)
        self._pad_id = pad_token
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self._encode = encoder(tokenizer, max_length)
        self._device = target
        self._model: Any = model

    def warmup(self) -> None:
        """Both ends of the length range at every batch size the batcher is likely to form."""
        long = Passage("warm up " * self.max_length, None)
        for size in warmup_sizes(self.config.max_batch_size):
            self._predict([Passage("warm up", None)] * size)
            self._predict([long] * size)

    @property
    def max_length(self) -> int:
        """Tokens per item, special tokens included (as configured until loaded)."""
        layout: Layout | None = getattr(self, "_layout", None)
        return (layout.max_length if layout else None) or self.options.max_length or 512

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: stripped (and lower-cased where the folder says so) as
        sentence-transformers does, special tokens added, truncated to ``max_length``, unpadded."""
        lower = self._layout.lower_case
        return self._encode([text.strip().lower() if lower else text.strip() for text in texts])

    def predict_batch(self, rows: list[Passage]) -> list[Embedding]:
        outputs, padding, total = self._predict(rows)
        if self.metrics is not None and total:
            self.metrics.padding_ratio.observe(padding / total)
        return outputs

    def _predict(self, rows: list[Passage]) -> tuple[list[Embedding], int, int]:
        """Vectors in row order, with the padding and total token counts of the batch."""
        import torch
        from torch.nn.functional import normalize

        texts = [row.content for row in rows if isinstance(row.content, str)]
        encoded = iter(self.tokenize(texts) if texts else [])
        ids = [next(encoded) if isinstance(row.content, str) else row.content for row in rows]
        with torch.inference_mode():
            pooled, padding, total = run_groups(ids, self.options, self._forward)
            vectors = torch.stack(pooled)
            unit = self._layout.normalize
            if unit:
                vectors = normalize(vectors, p=2, dim=1)
            values: list[list[float]] = vectors.cpu().tolist()
        outputs = []
        for row, tokens, vector in zip(rows, ids, values, strict=True):
            outputs.append(Embedding(cut(vector, row.dimensions, unit), len(tokens)))
        return outputs, padding, total

    def _forward(self, batch: list[list[int]]) -> tuple[list[torch.Tensor], int]:
        """The pooled vectors (float32) of one padded group, and its padded width."""
        input_ids, attention_mask, width = pad(batch, self._pad_id, self._pad_left, self._device)
        hidden = self._model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return list(pool(hidden.float(), attention_mask, self._layout.pooling).unbind(0)), width

    def describe(self) -> dict[str, Any]:
        layout: Layout | None = getattr(self, "_layout", None)
        item: dict[str, Any] = {
            "type": "string", "or": [{"type": "object", "keys": ["text"]},
                                     {"type": "object", "keys": ["tokens"]}],
            "max_chars": self.options.max_chars, "max_length": self.max_length,
            "truncation": f"texts longer than {self.max_length} tokens are cut to that length",
            "parameters": {"dimensions": sorted({self.size, *self.options.dimensions})},
        }
        output = {"type": "array", "items": "number", "length": self.size or None,
                  "pooling": layout.pooling if layout else self.options.pooling,
                  "normalized": layout.normalize if layout else self.options.normalize}
        return {"input": item, "output": output}



def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """One vector per row of ``hidden`` ([rows, tokens, size]) over the tokens ``mask`` keeps,
    as sentence-transformers' Pooling module computes it."""
    import torch

    if mode == "cls":  # the first real token, wherever the padding is
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.argmax(dim=1)]
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(keep == 0, -1e9).max(dim=1).values
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)


def read_layout(root: Path, options: EmbeddingFields) -> Layout:
    """How to embed with the folder at ``root``: from its sentence-transformers files when it has
    them, with ``options`` overriding them; a plain folder needs ``options.pooling``."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        if options.pooling is None:
            raise LoadError(f"{root} has no modules.json (it is not a sentence-transformers folder): "
                            "set options.pooling ('mean', 'cls' or 'max') to embed with it")
        return Layout(root, options.pooling, bool(options.normalize), options.max_length, False)
    modules = _read_json(modules_file)
    transformer, pooling_dir, normalize = None, None, False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = root / str(module.get("path", ""))
        if kind == "Transformer" and transformer is None:
            transformer = path
        elif kind == "Pooling" and pooling_dir is None:
            pooling_dir = path
        elif kind == "Normalize":
            normalize = True
        else:
            raise LoadError(f"{modules_file}: module {module.get('type')!r} is not supported (the "
                            "embedding backend runs Transformer, Pooling and Normalize only)")
    if transformer is None:
        raise LoadError(f"{modules_file} names no Transformer module")
    pooling = options.pooling or _pooling_mode(pooling_dir)
    config_file = transformer / "sentence_bert_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    seq = config.get("max_seq_length")
    max_length = options.max_length or (seq if isinstance(seq, int) else None)
    lower = bool(config.get("do_lower_case", False))
    return Layout(transformer, pooling, normalize if options.normalize is None else options.normalize,
                  max_length, lower)


def _pooling_mode(folder: Path | None) -> Pooling:
    if folder is None:
        raise LoadError("modules.json names no Pooling module: set options.pooling")
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise LoadError(f"{folder / 'config.json'} is not a JSON object")
    modes = [key for key, on in config.items() if key in _POOLING_KEYS and on is True]
    if len(modes) != 1 or _POOLING_KEYS[modes[0]] is None:
        raise LoadError(f"{folder / 'config.json'}: pooling {modes or 'none'} is not supported; "
                        "the embedding backend pools by exactly one of mean, cls or max tokens")
    mode = _POOLING_KEYS[modes[0]]
    assert mode is not None
    return mode


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot read {path}: {cause(exc)}") from None
