"""The user's sample inputs, and the HTTP requests made of them.

A file or a folder of files (not recursive):

- ``.json``: a list of items, ``{"inputs": [...]}``, or one item;
- ``.jsonl`` / ``.ndjson``: one item per line (a line ``{"inputs": [...]}`` gives its items);
- ``.txt``: one text per non-blank line;
- ``.jpg``, ``.jpeg``, ``.png``, ``.webp``: one image per file, sent as the raw body
  (``image_mode="raw"``, one image per request) or base64 in JSON (``"base64"``).

Items are what ``POST /predict/{model}`` takes in ``inputs`` (README, "HTTP API").
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchserve_planning.load.client import build_request

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
MAX_REQUESTS = 10_000
"""Distinct pre-built requests at most; they are sent in turn."""


class InputError(ValueError):
    """The sample inputs cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Sample:
    item: Any
    """A JSON item, or the bytes of an image."""
    content_type: str | None = None
    """The image's media type; None for JSON items."""


@dataclass(frozen=True)
class Requests:
    requests: tuple[bytes, ...]
    rows_per_request: int
    description: str
    """Where the samples came from and how they are sent, for reports."""


def load_samples(path: Path) -> list[Sample]:
    """Every sample in ``path`` (a file, or the supported files of a folder, by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in (*IMAGE_TYPES, *JSON_SUFFIXES, ".txt"))
        if not files:
            raise InputError(f"{path}: no .json, .jsonl, .txt or image files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: no such file or folder")
    samples = [sample for file in files for sample in _read(file)]
    if not samples:
        raise InputError(f"{path}: no samples found")
    return samples


def _read(path: Path) -> list[Sample]:
    suffix = path.suffix.lower()
    if suffix in IMAGE_TYPES:
        return [Sample(path.read_bytes(), IMAGE_TYPES[suffix])]
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        return [Sample(line) for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        try:
            return [Sample(item) for item in _items(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None
    if suffix in (".jsonl", ".ndjson"):
        samples: list[Sample] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                samples.extend(Sample(item) for item in _items(json.loads(line), single=True))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON: {exc}") from None
        return samples
    raise InputError(f"{path}: unsupported file type {suffix!r} (json, jsonl, txt, jpg, png, webp)")


def _items(value: Any, *, single: bool = False) -> list[Any]:
    if isinstance(value, dict) and isinstance(value.get("inputs"), list):
        return list(value["inputs"])
    if isinstance(value, list) and not single:
        return value
    return [value]


def build_requests(samples: list[Sample], *, host: str, port: int, model: str, rows_per_request: int = 1,
                   image_mode: Literal["raw", "base64"] = "raw",
                   parameters: dict[str, Any] | None = None) -> Requests:
    """Pre-built ``POST /predict/{model}`` requests, each of ``rows_per_request`` items."""
    import orjson

    if rows_per_request < 1:
        raise InputError("rows per request must be at least 1")
    path = f"/predict/{urllib.parse.quote(model, safe='')}"
    images = [s for s in samples if s.content_type is not None]
    if images and image_mode == "raw" and rows_per_request > 1:
        raise InputError("an image sent as the raw body is one item per request: "
                         "use base64 image mode for several images per request")
    requests: list[bytes] = []
    if image_mode == "raw":
        query = f"?{urllib.parse.urlencode(parameters)}" if parameters else ""
        for sample in images[:MAX_REQUESTS]:
            assert sample.content_type is not None
            requests.append(build_request(host, port, path + query, sample.item, sample.content_type))
        items = [s.item for s in samples if s.content_type is None]
    else:
        items = [base64.b64encode(s.item).decode() if s.content_type else s.item for s in samples]
    if items:
        count = min(MAX_REQUESTS, max(1, -(-len(items) // rows_per_request)))
        for index in range(count):
            rows = [items[(index * rows_per_request + j) % len(items)] for j in range(rows_per_request)]
            payload: dict[str, Any] = {"inputs": rows}
            if parameters:
                payload["parameters"] = parameters
            requests.append(build_request(host, port, path, orjson.dumps(payload), "application/json"))
    kinds = sorted({"image" if s.content_type else "text" if isinstance(s.item, str) else "JSON"
                    for s in samples})
    how = f"{rows_per_request} item(s) per request"
    if images:
        how += ", images as " + ("raw bodies" if image_mode == "raw" else "base64 JSON")
    return Requests(tuple(requests), rows_per_request,
                    f"{len(samples)} samples ({', '.join(kinds)}), {how}")
