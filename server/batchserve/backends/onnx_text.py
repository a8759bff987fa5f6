"""Text models' ONNX graphs served by ONNX Runtime, without torch or transformers: a sequence
classifier (``backend = "onnx-classifier"``, the transformer backend's items and outputs) and
a sentence embedder (``backend = "onnx-embedding"``, the embedding backend's).

``path`` is a folder holding ``model.onnx`` and the model's tokenizer (``tokenizer.json``, read
by the Rust ``tokenizers`` library alone, with ``tokenizer_config.json``'s pad token and
padding side) and ``config.json`` (labels, positions); an embedder's folder has its
sentence-transformers files too (``modules.json``, pooling, ``max_seq_length``):
``batchserve export NAME --to onnx`` writes such a folder from a served torch model. The graph
takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids``, if it has it: zeros), INT64
``[batch, tokens]``; a classifier's one output is ``[batch, labels]`` logits, an embedder's
first output ``[batch, tokens, hidden]`` token vectors, pooled and normalised here in float32.
Texts are tokenised with their batch, grouped by length and bounded by ``max_batch_tokens``
as the torch backends' are (``backends/text.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from pydantic import Field

from batchserve.backends import sized_samples
from batchserve.backends.base import Backend, LoadError, cause
from batchserve.backends.capabilities import InputSizes, Samples
from batchserve.backends.embedding import read_layout
from batchserve.backends.embedding_requests import EmbeddingFields, EmbeddingRequests, Passage, cut
from batchserve.backends.kinds import Embedding
from batchserve.backends.onnx_image import softmax
from batchserve.backends.onnx_session import Graph, SessionOptions, open_session
from batchserve.backends.text import (
    TextLimits,
    check_folder,
    check_token_budget,
    read_text,
    run_groups,
    rust_encoder,
)
from batchserve.backends.torch_common import warmup_sizes

Scores: TypeAlias = dict[str, Any]
_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxClassifierOptions(SessionOptions, TextLimits):
    max_length: int = Field(128, ge=2, le=65536)
    """Tokens per text, special tokens included; longer texts are truncated."""


class OnnxEmbeddingOptions(SessionOptions, TextLimits, EmbeddingFields):
    """The onnx-embedding backend's options: the session's, the text limits, the embedder's."""


class OnnxTextParts:
    """The graph, tokenizer and padded feeds both text presets share; listed before ``Backend``."""

    config: Any
    options: Any
    metrics: Any
    preset: str = ""
    _graph: Graph | None = None

    def open(self, device: str, max_length: int | None, folder: Path) -> dict[str, Any]:
        """The session and the tokenizer (truncating at ``max_length``, else the model's
        positions); the folder's ``config.json``, which the caller reads labels from."""
        check_folder(Path(self.config.path), self.preset)
        graph = open_session(self.config, self.options, device)
        names = [spec.name for spec in graph.inputs]
        if not {"input_ids", "attention_mask"} <= set(names) <= set(_FEEDS) or any(
                spec.dtype != "int64" or len(spec.shape) != 1 for spec in graph.inputs):
            raise LoadError(
                f"{self.config.path}: the graph's inputs {names} do not match the {self.preset} "
                "preset: input_ids and attention_mask (and optionally token_type_ids), INT64 "
                "[batch, tokens]; serve other graphs with backend = \"onnx\"")
        model_config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        settings = _read_json(folder / "tokenizer_config.json") \
            if (folder / "tokenizer_config.json").is_file() else {}
        try:
            from tokenizers import Tokenizer

            rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception for a bad file
            raise LoadError(f"cannot load {folder / 'tokenizer.json'}: {cause(exc)}") from None
        positions = model_config.get("max_position_embeddings")
        self.max_tokens = max_length or (positions if isinstance(positions, int) else 512)
        if isinstance(positions, int) and self.max_tokens > positions:
            raise LoadError(f"options.max_length = {self.max_tokens} but the model has only "
                            f"{positions} positions (max_position_embeddings); lower max_length")
        check_token_budget(self.options, self.max_tokens)
        pad_token = settings.get("pad_token")
        pad_id = rust.token_to_id(pad_token) if isinstance(pad_token, str) else None
        pad_id = pad_id if pad_id is not None else model_config.get("pad_token_id")
        if not isinstance(pad_id, int):
            raise LoadError(f"{folder}: neither tokenizer_config.json's pad_token nor config.json's "
                            "pad_token_id names a pad token, so batches cannot be padded")
        self._pad_id = pad_id
        self._pad_left = settings.get("padding_side") == "left"
        self._encode = rust_encoder(rust, self.max_tokens)
        self._vocab = rust.get_vocab_size()
        self._graph = graph
        return dict(model_config)

    def run(self, ids: list[list[int]], forward: Any) -> tuple[list[Any], int, int]:
        outputs, padding, total = run_groups(ids, self.options, forward)
        if self.metrics is not None and total:
            self.metrics.padding_ratio.observe(padding / total)
        return outputs, padding, total

    def feed(self, batch: list[list[int]]) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
        """The graph's inputs for one group, padded to its longest row, and that width."""
        assert self._graph is not None, "predict_batch before load"
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for n, ids in enumerate(batch):
            where = slice(width - len(ids), width) if self._pad_left else slice(0, len(ids))
            input_ids[n, where] = ids
            mask[n, where] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask,
                  "token_type_ids": np.zeros_like(input_ids)}
        return {spec.name: arrays[spec.name] for spec in self._graph.inputs}, width

    def unload(self) -> None:
        self._graph = None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts)

    @property
    def max_length(self) -> int:
        limit: int = getattr(self, "max_tokens", None) or self.options.max_length or 512
        return limit

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def sample_items(self) -> Samples:
        return sized_samples.long_text(self.max_length)

    def input_sizes(self) -> InputSizes:
        return InputSizes("text", "tokens", sized_samples.text_sizes(self.max_length))

    def sized_items(self, size: int) -> Samples:
        return sized_samples.text_of_tokens(self.tokenize, size, self.max_length)


class OnnxClassifierBackend(OnnxTextParts, Backend[str, Scores]):
    Options = OnnxClassifierOptions
    input_kind = "text"
    preset = "onnx-classifier"

    def load(self, device: str) -> None:
        folder = Path(self.config.path)
        model_config = self.open(device, self.options.max_length, folder)
        assert self._graph is not None
        outputs = self._graph.outputs
        if len(outputs) != 1 or len(outputs[0].shape) != 1 or outputs[0].shape[0] is None:
            raise LoadError(f"{self.config.path}: the graph's outputs do not match the onnx-classifier "
                            "preset: one output [batch, labels] of logits")
        count = outputs[0].shape[0]
        id2label = {int(k): str(v) for k, v in (model_config.get("id2label") or {}).items()}
        self._labels = [id2label.get(index, f"LABEL_{index}") for index in range(count)]

    def warmup(self) -> None:
        long = "warm up " * self.max_length
        for size in warmup_sizes(self.config.max_batch_size):
            self.predict_batch(["warm up"] * size)
            self.predict_batch([long] * size)

    def preprocess(self, item: Any, parameters: Any) -> str:
        return read_text(item, self.options.max_chars)

    def predict_batch(self, rows: list[str]) -> list[Scores]:
        return self.run(self.tokenize(rows), self._forward)[0]

    def _forward(self, batch: list[list[int]]) -> tuple[list[Scores], int]:
        assert self._graph is not None
        feed, width = self.feed(batch)
        probabilities = softmax(self._graph.session.run(None, feed)[0]).tolist()
        return [{"label": self._labels[max(range(len(p)), key=p.__getitem__)],
                 "scores": dict(zip(self._labels, p, strict=True))} for p in probabilities], width

    def text_labels(self) -> list[str]:  # its kind: backends/kinds.py's TextClassifier
        labels: list[str] = getattr(self, "_labels", [])
        return labels

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "string", "or": {"type": "object", "keys": ["text"]},
                          "max_chars": self.options.max_chars, "max_length": self.max_length},
                "output": {"type": "object", "fields": {"label": "class", "scores": "class -> probability"},
                           "labels": getattr(self, "_labels", None)},
                "runtime": "onnxruntime"}


class OnnxEmbeddingBackend(OnnxTextParts, EmbeddingRequests, Backend[Passage, Embedding]):
    Options = OnnxEmbeddingOptions
    input_kind = "text"
    preset = "onnx-embedding"

    def load(self, device: str) -> None:
        root = Path(self.config.path)
        check_folder(root, self.preset)
        layout = read_layout(root, self.options)
        model_config = self.open(device, layout.max_length, layout.transformer)
        assert self._graph is not None
        first = self._graph.outputs[0]
        if len(first.shape) != 2 or first.shape[1] is None:
            raise LoadError(f"{self.config.path}: the graph's first output {first.name} does not match "
                            "the onnx-embedding preset: token vectors [batch, tokens, hidden]")
        self._size = first.shape[1]
        self._layout = layout._replace(max_length=self.max_tokens)
        self._vocab = int(model_config.get("vocab_size") or self._vocab)
        self.check_dimensions()

    def warmup(self) -> None:
        long = Passage("warm up " * self.max_length, None)
        for size in warmup_sizes(self.config.max_batch_size):
            self.predict_batch([Passage("warm up", None)] * size)
            self.predict_batch([long] * size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        lower = self._layout.lower_case
        return self._encode([text.strip().lower() if lower else text.strip() for text in texts])

    def predict_batch(self, rows: list[Passage]) -> list[Embedding]:
        texts = [row.content for row in rows if isinstance(row.content, str)]
        encoded = iter(self.tokenize(texts) if texts else [])
        ids = [next(encoded) if isinstance(row.content, str) else row.content for row in rows]
        pooled = self.run(ids, self._forward)[0]
        vectors = np.stack(pooled)
        unit = self._layout.normalize
        if unit:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return [Embedding(cut(vector, row.dimensions, unit), len(tokens))
                for row, tokens, vector in zip(rows, ids, vectors.tolist(), strict=True)]

    def _forward(self, batch: list[list[int]]) -> tuple[list[np.ndarray[Any, Any]], int]:
        assert self._graph is not None
        feed, width = self.feed(batch)
        hidden = self._graph.session.run([self._graph.outputs[0].name], feed)[0].astype(np.float32)
        return list(pool(hidden, feed["attention_mask"], self._layout.pooling)), width

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "string", "or": [{"type": "object", "keys": ["text"]},
                                                    {"type": "object", "keys": ["tokens"]}],
                          "max_chars": self.options.max_chars, "max_length": self.max_length},
                "output": {"type": "array", "items": "number", "length": self.size or None},
                "runtime": "onnxruntime"}


def pool(hidden: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], mode: str) -> np.ndarray[Any, Any]:
    """One vector per row of ``hidden`` ([rows, tokens, size]) over the tokens ``mask`` keeps,
    as the embedding backend's ``pool`` computes it."""
    if mode == "cls":
        result: np.ndarray[Any, Any] = hidden[np.arange(len(hidden)), mask.argmax(axis=1)]
        return result
    keep = mask[..., None].astype(np.float32)
    if mode == "max":
        result = np.where(keep == 0, np.float32(-1e9), hidden).max(axis=1)
    else:
        result = (hidden * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1e-9)
    return result


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot read {path}: {cause(exc)}") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} is not a JSON object")
    return data
