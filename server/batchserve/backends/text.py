"""What the text backends share: the classifier (``transformer.py``) and the embedder
(``embedding.py``).

Both take texts that ``preprocess`` only validates; a batch is tokenised at once on its worker
thread (the Rust tokenizer's ``encode_batch``, which runs without the GIL), grouped by length so
that short texts are not padded to long ones, split so that no forward call holds more than
``max_batch_tokens`` padded tokens, and padded only to each group's longest row.

Importing this module does not import torch or transformers; each function does, when called.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from batchserve.backends import sized_samples
from batchserve.backends.base import LoadError, cause
from batchserve.backends.capabilities import InputSizes, Samples
from batchserve.backends.torch_common import TorchModelParts, TorchOptions
from batchserve.errors import InvalidInput

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

GROUP_RATIO = 1.15
"""A row joins the current length group while it is at most this many times as long as the
group's shortest row (in tokens)... (1.5 left texts of 200 and 256 tokens in one group: mean
padding 0.13 in benchmarks/transformer_server.py, against 0.05 with 1.15)"""
GROUP_SLACK_TOKENS = 16
"""...or at most this many tokens longer: padding a few tokens costs less than another forward call."""
ITEM_FORM = 'a string or {"text": string}'


class TextLimits(BaseModel):
    """Options every text backend takes, torch or ONNX Runtime (``max_length`` is each one's own)."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(10_000, ge=1)
    """Longest text accepted, in characters; longer items are refused with 400."""
    length_grouping: bool = True
    """Sort each batch by length and run rows of very different lengths as separate groups."""
    max_batch_tokens: int | None = Field(None, ge=2)
    """Most padded tokens (rows x the longest row) in one forward call; a batch past it runs as
    several calls. Default: no bound but ``max_batch_size`` rows."""


class TextOptions(TorchOptions, TextLimits):
    """Options every torch text backend takes."""

    quantize: Literal["none", "int8"] = "none"
    """``int8``: dynamic int8 quantisation of the linear layers (CPU only)."""


def read_text(item: Any, max_chars: int, form: str = ITEM_FORM) -> str:
    """An item's text (a string or ``{"text": string}``), validated; ``InvalidInput`` says why."""
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"text"})
        if unknown:
            raise InvalidInput(f"unknown keys {unknown}; an item is {form}")
        if "text" not in item:
            raise InvalidInput(f"missing key 'text'; an item is {form}")
        item = item["text"]
    if not isinstance(item, str):
        raise InvalidInput(f"expected {form}, got {type(item).__name__}")
    if len(item) > max_chars:
        raise InvalidInput(f"text has {len(item)} characters; this model accepts at most "
                           f"{max_chars} (max_chars)")
    if not item.strip():
        raise InvalidInput("text is empty")
    return item


def length_groups(lengths: Sequence[int], *, grouping: bool, max_tokens: int | None) -> list[list[int]]:
    """Row indices, split into groups that are padded and run together.

    With ``grouping`` the rows are sorted by length, and a new group starts when the next row
    is more than ``GROUP_RATIO`` times as long as the group's shortest row and more than
    ``GROUP_SLACK_TOKENS`` longer; without it the batch is one group in arrival order. Then,
    with ``max_tokens``, a group is cut wherever its rows times its longest row would pass it
    (a row longer than ``max_tokens`` alone still runs alone: ``check_token_budget`` refuses
    such settings at load).
    """
    if grouping:
        groups: list[list[int]] = []
        shortest = 0
        for index in sorted(range(len(lengths)), key=lengths.__getitem__):
            length = lengths[index]
            if groups and length <= max(shortest * GROUP_RATIO, shortest + GROUP_SLACK_TOKENS):
                groups[-1].append(index)
            else:
                groups.append([index])
                shortest = length
    else:
        groups = [list(range(len(lengths)))]
    if max_tokens is None:
        return groups
    bounded: list[list[int]] = []
    for group in groups:
        part: list[int] = []
        width = 0
        for index in group:
            wider = max(width, lengths[index])
            if part and wider * (len(part) + 1) > max_tokens:
                bounded.append(part)
                part, wider = [], lengths[index]
            part.append(index)
            width = wider
        bounded.append(part)
    return bounded


def run_groups(ids: list[list[int]], options: TextLimits,
               forward: Callable[[list[list[int]]], tuple[list[T], int]]) -> tuple[list[T], int, int]:
    """``forward`` over ``ids`` in length groups; its outputs in row order, with the padding and
    total token counts of the batch. ``forward`` answers a group's outputs and padded width."""
    outputs: list[Any] = [None] * len(ids)
    padding = total = 0
    groups = length_groups([len(row) for row in ids], grouping=options.length_grouping,
                           max_tokens=options.max_batch_tokens)
    for group in groups:
        results, width = forward([ids[index] for index in group])
        total += width * len(group)
        padding += sum(width - len(ids[index]) for index in group)
        for index, result in zip(group, results, strict=True):
            outputs[index] = result
    return outputs, padding, total


def pad(batch: list[list[int]], pad_id: int, left: bool,
        device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Input ids and attention mask of one group, padded to its longest row, and that width."""
    import torch

    width = max(len(ids) for ids in batch)
    padded = [[pad_id] * (width - len(ids)) + ids if left else ids + [pad_id] * (width - len(ids))
              for ids in batch]
    masks = [[0] * (width - len(ids)) + [1] * len(ids) if left else
             [1] * len(ids) + [0] * (width - len(ids)) for ids in batch]
    return (torch.tensor(padded, dtype=torch.long, device=device),
            torch.tensor(masks, dtype=torch.long, device=device), width)


def check_folder(path: Path, backend: str) -> None:
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "not found"
        raise LoadError(
            f"model folder {what}: {path}. The {backend} backend loads a folder written by "
            "save_pretrained (config.json, model.safetensors, tokenizer files); a Hugging Face hub "
            "id needs network access, which the server does not use: download the model elsewhere "
            "with save_pretrained and point path at the folder")


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a local folder; never from the network."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # quiet server log
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise LoadError(f"cannot load a tokenizer from {path}: {cause(exc)}") from None


def check_max_length(config: Any, max_length: int) -> None:
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise LoadError(f"options.max_length = {max_length} but the model has only {positions} "
                        "positions (max_position_embeddings); lower max_length")


def check_token_budget(options: TextLimits, max_length: int) -> None:
    """``max_batch_tokens`` must hold one row of ``max_length`` tokens."""
    budget = options.max_batch_tokens
    if budget is not None and budget < max_length:
        raise LoadError(f"options.max_batch_tokens = {budget} is less than one text of max_length "
                        f"({max_length} tokens); raise it to at least {max_length}")


def pad_id(tokenizer: Any, config: Any) -> int:
    for candidate in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    raise LoadError("neither the tokenizer nor the model config has a pad token; set pad_token in "
                    "tokenizer_config.json (e.g. to the eos token) so batches can be padded")


def encoder(tokenizer: Any, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    """A function from texts to truncated token ids (special tokens added, no padding).

    A fast tokenizer is used through a private copy of its Rust ``Tokenizer`` with truncation
    set once: calling the transformers wrapper re-applies its truncation settings to the shared
    Rust object on every call, which costs 2-5x more on short texts and is not safe from two
    threads at once. Its ``encode_batch`` releases the GIL while it works.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return rust_encoder(copy.deepcopy(backend), max_length)

    def encode_slow(texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = tokenizer(texts, truncation=True, max_length=max_length,
                                         add_special_tokens=True)["input_ids"]
        return ids

    return encode_slow


def rust_encoder(rust: Any, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    """``encoder`` of a ``tokenizers.Tokenizer`` of the caller's own (it is set to truncate)."""
    rust.no_padding()
    rust.enable_truncation(max_length)

    def encode_fast(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in rust.encode_batch(texts)]

    return encode_fast


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations per batch).

    ``torch.ao.quantization`` warns that it is deprecated in favour of torchao, which is not a
    dependency; the warnings are silenced here, so they neither spam the log nor fail a test
    run that turns warnings into errors. (``catch_warnings`` is process-wide, but this runs once,
    while the model loads.)
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError:
            raise LoadError(f"options.quantize = 'int8' needs torch.ao.quantization, which torch "
                            f"{torch.__version__} no longer has") from None
        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


def check_quantize(options: TextOptions, device: torch.device) -> None:
    if options.quantize == "int8" and device.type != "cpu":
        raise LoadError(f"options.quantize = 'int8' (dynamic quantisation) runs on the CPU only, "
                        f"not on {device}; use dtype = 'float16' or 'bfloat16' on a GPU")


class TextModelParts(TorchModelParts):
    """What the torch text backends (``transformer``, ``embedding``) share beyond their rows:
    the unload, and the planner's sample texts (with ``TorchModelParts``' capabilities). Listed
    before ``Backend`` in a backend's bases; the backend sets ``_model`` and ``_device`` as it
    loads."""

    _device: Any = None

    @property
    def max_length(self) -> int:
        """Tokens per item, special tokens included."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text as the backend encodes a batch (special tokens, truncation)."""
        raise NotImplementedError

    def unload(self) -> None:
        on_cuda = self._device is not None and self._device.type == "cuda"
        self._model = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    def sample_items(self) -> Samples:
        return sized_samples.long_text(self.max_length)

    def input_sizes(self) -> InputSizes:
        return InputSizes("text", "tokens", sized_samples.text_sizes(self.max_length))

    def sized_items(self, size: int) -> Samples:
        return sized_samples.text_of_tokens(self.tokenize, size, self.max_length)
