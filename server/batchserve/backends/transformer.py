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

from pathlib import Path
from typing import Any, TypeAlias

from pydantic import Field

from batchserve.backends.base import Backend, LoadError, cause
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
    read_text,
    run_groups,
)
from batchserve.backends.torch_common import resolve_device, resolve_dtype, set_threads, warmup_sizes

Scores: TypeAlias = dict[str, Any]
"""One text's output: ``{"label": the most likely label, "scores": label -> probability}``."""


class TransformerOptions(TextOptions):
    max_length: int = Field(128, ge=2, le=65536)
    """Tokens per text, special tokens included; longer texts are truncated."""


class TransformerBackend(TextModelParts, Backend[str, Scores]):
    Options = TransformerOptions
    input_kind = "text"

    def load(self, device: str) -> None:
        target = resolve_device(device)
        dtype = resolve_dtype(self.options.dtype, target)
        check_quantize(self.options, target)
        check_token_budget(self.options, self.options.max_length)
        set_threads(self.options, target, self.config.instances)
        tokenizer, model = _from_pretrained(Path(self.config.path))
        labels = _labels(model.config)
        check_max_length(model.config, self.options.max_length)
        pad_token = pad_id(tokenizer, model.config)
        model.eval()
        model.to(device=target, dtype=dtype)
        if self.options.quantize == "int8":
            model = quantize_int8(model)
        self._pad_id = pad_token
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self._encode = encoder(tokenizer, self.options.max_length)
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
        return read_text(item, self.options.max_chars)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: special tokens added, truncated to ``max_length``, unpadded."""
        return self._encode(texts)

    def predict_batch(self, rows: list[str]) -> list[Scores]:
        outputs, padding, total = self._predict(rows)
        if self.metrics is not None and total:
            self.metrics.padding_ratio.observe(padding / total)
        return outputs

    def _predict(self, rows: list[str]) -> tuple[list[Scores], int, int]:
        """Outputs in row order, with the padding and total token counts of the batch."""
        import torch

        with torch.inference_mode():
            return run_groups(self.tokenize(rows), self.options, self._forward)

    def _forward(self, batch: list[list[int]]) -> tuple[list[Scores], int]:
        """The outputs of one padded group (softmax in float32), and its padded width."""
        import torch

        input_ids, attention_mask, width = pad(batch, self._pad_id, self._pad_left, self._device)
        logits = self._model(input_ids=input_ids, attention_mask=attention_mask).logits
        probabilities: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return [self._output(scores) for scores in probabilities], width

    def _output(self, scores: list[float]) -> dict[str, Any]:
        best = max(range(len(scores)), key=scores.__getitem__)
        return {"label": self._labels[best],
                "scores": dict(zip(self._labels, scores, strict=True))}

    def text_labels(self) -> list[str]:  # its kind: backends/kinds.py's TextClassifier
        """Label names by class index (empty until loaded)."""
        labels: list[str] = getattr(self, "_labels", [])
        return labels

    @property
    def max_length(self) -> int:
        limit: int = self.options.max_length
        return limit

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



def _from_pretrained(path: Path) -> tuple[Any, Any]:
    """Tokenizer and model from a local ``save_pretrained`` folder; never from the network."""
    check_folder(path, "transformer")
    tokenizer = load_tokenizer(path)
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise LoadError(f"cannot load a sequence-classification model from {path}: {cause(exc)}") from None
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
