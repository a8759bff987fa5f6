"""What the sentence embedders share, torch or ONNX Runtime (``embedding.py``,
``onnx_text.py``): their options beyond the text limits, the request side (items, ``dimensions``)
and the vector cut to a requested size. Importing it imports neither torch nor onnxruntime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from batchserve.backends.text import read_text
from batchserve.errors import InvalidInput

if TYPE_CHECKING:
    from batchserve.config import ModelConfig

Pooling = Literal["mean", "cls", "max"]
ITEM_FORM = 'a string, {"text": string} or {"tokens": [token ids]}'


class EmbeddingFields(BaseModel):
    """Options every sentence embedder takes."""

    model_config = ConfigDict(extra="forbid")

    max_length: int | None = Field(None, ge=2, le=65536)
    """Tokens per text, special tokens included; longer texts are truncated. Default: the
    folder's ``max_seq_length``, else the model's positions."""
    pooling: Pooling | None = None
    """How token vectors become one: ``mean`` (over the real tokens), ``cls`` (the first token),
    ``max``. Default: the folder's ``1_Pooling/config.json``; a plain folder must give it."""
    normalize: bool | None = None
    """Scale each vector to length 1. Default: whether ``modules.json`` has a Normalize module."""
    dimensions: list[int] = Field(default_factory=list)
    """Shorter sizes a request may ask for (``dimensions``), for models trained to be cut
    (Matryoshka); the full size is always allowed."""


class Passage(NamedTuple):
    """A row: a text or the model's token ids, and the size its vector is cut to (``None``: full)."""

    content: str | list[int]
    dimensions: int | None


class EmbeddingRequests:
    """An embedder's request side; listed before ``Backend`` in its bases. The backend sets
    ``_size`` (values per vector) and ``_vocab`` (token ids allowed) as it loads, and has
    ``max_length``."""

    config: ModelConfig
    options: Any
    _size: int = 0
    _vocab: int = 0

    @property
    def max_length(self) -> int:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Values per vector at full size (0 until loaded)."""
        return self._size

    def vector_size(self) -> int:  # its kind: backends/kinds.py's SentenceEmbedder
        return self.size

    def parse_parameters(self, parameters: Any) -> int | None:
        """``{"dimensions": n}`` or nothing; ``n`` must be the full size or one the model allows."""
        unknown = sorted(set(parameters) - {"dimensions"})
        if unknown:
            raise InvalidInput(f"unknown parameters {unknown}; this model takes 'dimensions' only")
        wanted = parameters.get("dimensions")
        if wanted is None or wanted == self.size:
            return None
        allowed = sorted({self.size, *self.options.dimensions})
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted not in allowed:
            raise InvalidInput(f"dimensions = {wanted!r:.40}: model '{self.config.name}' gives "
                               f"vectors of {allowed} values only (options.dimensions lists the "
                               "shorter sizes it was trained for)")
        return wanted

    def preprocess(self, item: Any, parameters: Any) -> Passage:
        """The item's text or token ids, validated; texts are tokenised with their batch."""
        if isinstance(item, dict) and "tokens" in item:
            if len(item) != 1:
                raise InvalidInput(f"unknown keys {sorted(set(item) - {'tokens'})}; an item is {ITEM_FORM}")
            return Passage(self._check_tokens(item["tokens"]), parameters)
        return Passage(read_text(item, self.options.max_chars, ITEM_FORM), parameters)

    def _check_tokens(self, tokens: Any) -> list[int]:
        if not isinstance(tokens, list) or not tokens:
            raise InvalidInput("'tokens' must be a non-empty list of token ids")
        if len(tokens) > self.max_length:
            raise InvalidInput(f"{len(tokens)} tokens; this model takes at most {self.max_length} "
                               "(max_length), special tokens included")
        for index, token in enumerate(tokens):
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < self._vocab:
                raise InvalidInput(f"token {index} is {token!r:.40}; token ids are integers from 0 "
                                   f"to {self._vocab - 1} (the model's vocabulary)")
        return tokens

    def check_dimensions(self) -> None:
        """``options.dimensions`` within the loaded model's size (``LoadError`` otherwise)."""
        from batchserve.backends.base import LoadError

        wrong = [d for d in self.options.dimensions if not 1 <= d < self.size]
        if wrong:
            raise LoadError(f"options.dimensions {wrong}: each must be between 1 and {self.size - 1} "
                            f"(the model's vectors have {self.size} values)")


def cut(vector: list[float], dimensions: int | None, unit: bool) -> list[float]:
    """``vector``'s first ``dimensions`` values (all for ``None``), renormalised when ``unit``."""
    if dimensions is None:
        return vector
    vector = vector[:dimensions]
    if unit:
        norm = sum(v * v for v in vector) ** 0.5 or 1.0
        vector = [v / norm for v in vector]
    return vector
