"""Hugging Face sequence classifiers (``AutoModelForSequenceClassification``).

An item is a string or ``{"text": string}``; the output is the most likely label and every
label's probability. ``path`` is a folder written by ``save_pretrained`` (tokenizer and model);
nothing is downloaded. ``preprocess`` only validates (on the event loop: it is cheap); each batch
is tokenised at once on the batch's worker thread (the Rust tokenizer's ``encode_batch``, which
runs without the GIL), so tokenising neither holds up the event loop nor competes with it for
the GIL. A batch is padded only as far as its longest row, and with ``length_grouping`` rows of
very different lengths run as separate groups so that short texts do not pay for long ones.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import Field

from batchserve.backends.base import Backend, LoadError
from batchserve.backends.capabilities import Samples
from batchserve.backends.torch_common import (
    TorchOptions,
    resolve_device,
    resolve_dtype,
    set_threads,
    warmup_sizes,
)
from batchserve.errors import InvalidInput

if TYPE_CHECKING:
    import torch

GROUP_RATIO = 1.15
"""A row joins the current length group while it is at most this many times as long as the
group's shortest row (in tokens)... (1.5 left texts of 200 and 256 tokens in one group: mean
padding 0.13 in benchmarks/transformer_server.py, against 0.05 with 1.15)"""
GROUP_SLACK_TOKENS = 16
"""...or at most this many tokens longer: padding a few tokens costs less than another forward call."""
_ITEM_FORM = 'a string or {"text": string}'

Scores: TypeAlias = dict[str, Any]
"""One text's output: ``{"label": the most likely label, "scores": label -> probability}``."""


class TransformerOptions(TorchOptions):
    max_length: int = Field(128, ge=2, le=65536)
    """Tokens per text, special tokens included; longer texts are truncated."""
    max_chars: int = Field(10_000, ge=1)
    """Longest text accepted, in characters; longer items are refused with 400."""
    length_grouping: bool = True
    """Sort each batch by length and run rows of very different lengths as separate groups."""
    quantize: Literal["none", "int8"] = "none"
    """``int8``: dynamic int8 quantisation of the linear layers (CPU only)."""


class TransformerBackend(Backend[str, Scores]):
    Options = TransformerOptions

    def load(self, device: str) -> None:
        target = resolve_device(device)
        dtype = resolve_dtype(self.options.dtype, target)
        if self.options.quantize == "int8" and target.type != "cpu":
            raise LoadError(f"options.quantize = 'int8' (dynamic quantisation) runs on the CPU only, "
                            f"not on {target}; use dtype = 'float16' or 'bfloat16' on a GPU")
        set_threads(self.options, target, self.config.instances)
        tokenizer, model = _from_pretrained(Path(self.config.path))
        labels = _labels(model.config)
        _check_max_length(model.config, self.options.max_length)
        pad_id = _pad_id(tokenizer, model.config)
        model.eval()
        model.to(device=target, dtype=dtype)
        if self.options.quantize == "int8":
            model = _quantize_int8(model)
        self._pad_id = pad_id
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self._encode = _encoder(tokenizer, self.options.max_length)
        self._device = target
        self._model: Any = model
        self._labels = labels

    def warmup(self) -> None:
        """Both ends of the length range at every batch size the batcher is likely to form."""
        long = "warm up " * self.options.max_length
        for size in warmup_sizes(self.config.max_batch_size):
            self._predict(["warm up"] * size)
            self._predict([long] * size)

    def preprocess(self, item: Any, parameters: Any) -> str:
        """The item's text, validated; it is tokenised with the rest of its batch."""
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"text"})
            if unknown:
                raise InvalidInput(f"unknown keys {unknown}; an item is {_ITEM_FORM}")
            if "text" not in item:
                raise InvalidInput(f"missing key 'text'; an item is {_ITEM_FORM}")
            item = item["text"]
        if not isinstance(item, str):
            raise InvalidInput(f"expected {_ITEM_FORM}, got {type(item).__name__}")
        if len(item) > self.options.max_chars:
            raise InvalidInput(f"text has {len(item)} characters; this model accepts at most "
                               f"{self.options.max_chars} (max_chars)")
        if not item.strip():
            raise InvalidInput("text is empty")
        return item

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: special tokens added, truncated to ``max_length``, unpadded."""
        return self._encode(texts)

    def predict_batch(self, rows: list[str]) -> list[Scores]:
        outputs, padding, total = self._predict(rows)
        if self.metrics is not None and total:
            self.metrics.padding_ratio.observe(padding / total)
        return outputs

    def _predict(self, rows: list[str]) -> tuple[list[dict[str, Any]], int, int]:
        """Outputs in row order, with the padding and total token counts of the batch."""
        import torch

        ids = self.tokenize(rows)
        outputs: list[dict[str, Any]] = [{}] * len(rows)
        padding = total = 0
        with torch.inference_mode():
            for group in self._groups(ids):
                probabilities, width = self._forward([ids[index] for index in group])
                total += width * len(group)
                padding += sum(width - len(ids[index]) for index in group)
                for index, scores in zip(group, probabilities, strict=True):
                    outputs[index] = self._output(scores)
        return outputs, padding, total

    def _groups(self, rows: list[list[int]]) -> list[list[int]]:
        """Row indices, split into groups that are padded and run together.

        With ``length_grouping`` the rows are sorted by length, and a new group starts when the
        next row is more than ``GROUP_RATIO`` times as long as the group's shortest row and more
        than ``GROUP_SLACK_TOKENS`` longer. Without it the batch is one group in arrival order.
        """
        if not self.options.length_grouping:
            return [list(range(len(rows)))]
        order = sorted(range(len(rows)), key=lambda index: len(rows[index]))
        groups: list[list[int]] = []
        shortest = 0
        for index in order:
            length = len(rows[index])
            if groups and length <= max(shortest * GROUP_RATIO, shortest + GROUP_SLACK_TOKENS):
                groups[-1].append(index)
            else:
                groups.append([index])
                shortest = length
        return groups

    def _forward(self, batch: list[list[int]]) -> tuple[list[list[float]], int]:
        """Class probabilities (softmax in float32) of one padded group, and its padded width."""
        import torch

        width = max(len(ids) for ids in batch)
        pad, left = self._pad_id, self._pad_left
        padded = [[pad] * (width - len(ids)) + ids if left else ids + [pad] * (width - len(ids))
                  for ids in batch]
        masks = [[0] * (width - len(ids)) + [1] * len(ids) if left else
                 [1] * len(ids) + [0] * (width - len(ids)) for ids in batch]
        input_ids = torch.tensor(padded, dtype=torch.long, device=self._device)
        attention_mask = torch.tensor(masks, dtype=torch.long, device=self._device)
        logits = self._model(input_ids=input_ids, attention_mask=attention_mask).logits
        probabilities: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return probabilities, width

    def _output(self, scores: list[float]) -> dict[str, Any]:
        best = max(range(len(scores)), key=scores.__getitem__)
        return {"label": self._labels[best],
                "scores": dict(zip(self._labels, scores, strict=True))}

    @property
    def labels(self) -> list[str]:
        """Label names by class index (empty until loaded)."""
        labels: list[str] = getattr(self, "_labels", [])
        return labels

    def describe(self) -> dict[str, Any]:
        options = self.options
        item: dict[str, Any] = {
            "type": "string", "or": {"type": "object", "keys": ["text"]},
            "max_chars": options.max_chars, "max_length": options.max_length,
            "truncation": f"texts longer than {options.max_length} tokens are cut to that length",
        }
        output = {"type": "object", "fields": {"label": "class", "scores": "class -> probability"},
                  "labels": getattr(self, "_labels", None)}
        return {"input": item, "output": output}

    def unload(self) -> None:
        on_cuda = getattr(self, "_device", None) is not None and self._device.type == "cuda"
        self._model = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    # -- capabilities for the planner (backends/capabilities.py) ---------------------------------

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def torch_modules(self) -> list[Any]:
        model = getattr(self, "_model", None)
        return [model] if model is not None else []

    def sample_items(self) -> Samples:
        text = " ".join(["the battery life is great and the screen is sharp"] * 64)
        return Samples([text], f"a text of {len(text)} characters, truncated at max_length "
                               f"({self.options.max_length} tokens)")


def _from_pretrained(path: Path) -> tuple[Any, Any]:
    """Tokenizer and model from a local ``save_pretrained`` folder; never from the network."""
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "not found"
        raise LoadError(
            f"model folder {what}: {path}. The transformer backend loads a folder written by "
            "save_pretrained (config.json, model.safetensors, tokenizer files); a Hugging Face hub "
            "id needs network access, which the server does not use: download the model elsewhere "
            "with save_pretrained and point path at the folder")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # quiet server log
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise LoadError(f"cannot load a tokenizer from {path}: {exc}") from None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise LoadError(f"cannot load a sequence-classification model from {path}: {exc}") from None
    return tokenizer, model


def _labels(config: Any) -> list[str]:
    """Label names by class index; softmax scores only make sense for single-label classifiers."""
    problem = getattr(config, "problem_type", None)
    if problem in ("regression", "multi_label_classification"):
        raise LoadError(f"the model's problem_type is {problem!r}; the transformer backend serves "
                        "single-label classifiers (softmax over the labels)")
    id2label = {int(index): str(label) for index, label in (config.id2label or {}).items()}
    count = int(config.num_labels)
    return [id2label.get(index, f"LABEL_{index}") for index in range(count)]


def _check_max_length(config: Any, max_length: int) -> None:
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise LoadError(f"options.max_length = {max_length} but the model has only {positions} "
                        "positions (max_position_embeddings); lower max_length")


def _pad_id(tokenizer: Any, config: Any) -> int:
    for candidate in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    raise LoadError("neither the tokenizer nor the model config has a pad token; set pad_token in "
                    "tokenizer_config.json (e.g. to the eos token) so batches can be padded")


def _encoder(tokenizer: Any, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    """A function from texts to truncated token ids (special tokens added, no padding).

    A fast tokenizer is used through a private copy of its Rust ``Tokenizer`` with truncation
    set once: calling the transformers wrapper re-applies its truncation settings to the shared
    Rust object on every call, which costs 2-5x more on short texts and is not safe from two
    threads at once. Its ``encode_batch`` releases the GIL while it works.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encoder = copy.deepcopy(backend)
        encoder.no_padding()
        encoder.enable_truncation(max_length)

        def encode_fast(texts: list[str]) -> list[list[int]]:
            return [encoding.ids for encoding in encoder.encode_batch(texts)]

        return encode_fast

    def encode_slow(texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = tokenizer(texts, truncation=True, max_length=max_length,
                                         add_special_tokens=True)["input_ids"]
        return ids

    return encode_slow


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
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
