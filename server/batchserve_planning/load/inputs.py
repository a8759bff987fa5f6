"""The user's sample inputs, and the HTTP requests made of them.

A file or a folder of files (not recursive):

- ``.json``: a list of items, ``{"inputs": [...]}``, or one item;
- ``.jsonl`` / ``.ndjson``: one item per line (a line ``{"inputs": [...]}`` gives its items);
- ``.txt``: one text per non-blank line;
- ``.jpg``, ``.jpeg``, ``.png``, ``.webp``: one image per file, sent as the raw body
  (``image_mode="raw"``, one image per request) or base64 in JSON (``"base64"``).

Given the model's input kind (``Backend.input_kind``, published at ``GET /models/{name}``), only
the files of that kind are taken from a folder, and inputs of another kind are refused up front.

Items are what ``POST /predict/{model}`` takes in ``inputs`` (docs/http-api.md, "HTTP API").
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable
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
    protocol: Literal["http", "grpc"] = "http"
    """``grpc``: serialized ``ModelInferRequest``s (``grpc_client.build_grpc_requests``)."""
    port: int | None = None
    """Where they go, on the server's host: ``None``, the HTTP port of its URL; else its gRPC port."""


KINDS = {
    "image": "image files (.jpg, .jpeg, .png, .webp), or JSON items {\"b64\": ...}",
    "text": ".txt lines, or .json/.jsonl items that are strings or {\"text\": ...}",
    "rows": ".json/.jsonl items that are arrays of numbers or objects of named features",
    "json": ".json or .jsonl items",
}
"""The input kinds a backend declares (``Backend.input_kind``), and the sample files of each;
a repository file's model: ``batchserve_planning.input_kinds.input_kind_of_table``."""
_OTHER_FILES = {".py": "Python file", ".md": "Markdown file", ".csv": "CSV file"}


def server_input_kind(base_url: str, model: str) -> str:
    """``input_kind`` of ``GET /models/{model}`` on a running server; raises ``ServerError``."""
    from batchserve_planning.load.scrape import ServerError, model_state

    kind = model_state(base_url, model).get("input_kind")
    if not isinstance(kind, str):
        raise ServerError(f"{base_url}/models/{model} does not say the model's input kind "
                          "('input_kind'): a server older than this client")
    return kind


@dataclass(frozen=True)
class _Found:
    """One entry of the inputs: what it is (for messages) and, for a sample file, its kind."""
    path: Path
    noun: str
    """Singular, pluralised with an "s": "JPEG image", "JSON file"."""
    detail: str = ""
    """After the noun: " of rows"."""
    kind: str | None = None
    """"image", "text", "rows", "json" (JSON items of no other kind), "mixed"; None: no samples."""
    samples: tuple[Sample, ...] | None = None
    """JSON and text files' samples, read to know their kind; images are read once chosen."""
    kinds: tuple[str, ...] = ()
    """The item kinds of a JSON file that mixes them."""


def load_samples(path: Path, kind: str | None = None, *,
                 on_skip: Callable[[str], object] | None = None) -> list[Sample]:
    """The samples in ``path``: a file, or a folder's files (by name, not recursive).

    ``kind`` (the model's input kind, ``KINDS``) given: only the folder's files of that kind are
    taken, and ``on_skip`` is told what was left out; a file of another kind, a JSON file mixing
    kinds, or a folder with nothing of the kind raise ``InputError`` saying what was found.
    ``kind`` None: every .json, .jsonl, .txt and image file."""
    if path.is_dir():
        found = [_inspect(entry) for entry in sorted(path.iterdir())]
    elif path.is_file():
        found = [_inspect(path)]
    else:
        raise InputError(f"{path}: no such file or folder")
    chosen: list[_Found] = []
    skipped: list[_Found] = []
    for entry in found:
        taken = entry.kind is not None if kind is None else _takes(kind, entry)
        (chosen if taken else skipped).append(entry)
    if kind is None:
        if not chosen and path.is_dir():
            raise InputError(f"{path}: no .json, .jsonl, .txt or image files in this folder")
        if not chosen:
            raise InputError(f"{path}: unsupported file type {path.suffix.lower()!r} "
                             "(json, jsonl, txt, jpg, png, webp)")
    else:
        if not chosen:
            wanted = f"{kind} input ({KINDS.get(kind, 'a kind this client cannot read from files')})"
            if not path.is_dir():
                raise InputError(f"{path}: a {found[0].noun}{found[0].detail}, not {wanted}")
            raise InputError(f"{path}: nothing in this folder is {wanted}; "
                             f"found {_describe(found) if found else 'nothing'}")
        if skipped and on_skip is not None:
            on_skip(f"{path}: took {_describe(chosen)}; skipped, as not {kind} input: "
                    f"{_describe(skipped)}")
    samples = [s for f in chosen for s in (f.samples if f.samples is not None else _read(f.path))]
    if not samples:
        raise InputError(f"{path}: no samples found")
    return samples


def _takes(kind: str, found: _Found) -> bool:
    """True when ``found`` is input of ``kind``; raises for a JSON file mixing it with others."""
    if found.kind == "mixed" and kind in found.kinds:
        raise InputError(f"{found.path}: mixes {', '.join(found.kinds)} items; the model takes {kind} "
                         "items only")
    if kind == "json":
        return found.samples is not None and found.path.suffix.lower() in JSON_SUFFIXES
    return found.kind == kind


def _inspect(path: Path) -> _Found:
    suffix = path.suffix.lower()
    if path.is_dir():
        return _Found(path, "folder")
    if suffix in IMAGE_TYPES:
        return _Found(path, f"{IMAGE_TYPES[suffix].partition('/')[2].upper()} image", kind="image")
    if suffix == ".txt":
        return _Found(path, "text file", kind="text", samples=tuple(_read(path)))
    if suffix in JSON_SUFFIXES:
        samples = tuple(_read(path))
        kinds = tuple(sorted({_item_kind(s.item) for s in samples}))
        noun = "JSON file" if suffix == ".json" else "JSON lines file"
        if len(kinds) > 1:
            return _Found(path, noun, f" of mixed items ({', '.join(kinds)})", "mixed", samples, kinds)
        item_kind = kinds[0] if kinds else "json"
        other = " of other values" if kinds else " without items"
        detail = other if item_kind == "json" else f" of {item_kind}"
        return _Found(path, noun, detail, item_kind, samples)
    noun = _OTHER_FILES.get(suffix, f"{suffix} file" if suffix else "file without an extension")
    return _Found(path, noun)


def _item_kind(item: Any) -> str:
    if isinstance(item, str):
        return "text"
    if isinstance(item, dict):
        return "image" if "b64" in item else "text" if {"text", "tokens"} & item.keys() else "rows"
    return "rows" if isinstance(item, list) else "json"


def _describe(found: list[_Found]) -> str:
    """"2 JPEG images (china.jpg, flower.jpg), 1 text file (README.txt)", in order of first sight."""
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in found:
        groups.setdefault((entry.noun, entry.detail), []).append(entry.path.name)
    parts = []
    for (noun, detail), names in groups.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{len(names)} {noun}{'s' if len(names) > 1 else ''}{detail} ({shown})")
    return ", ".join(parts)


def _read(path: Path) -> list[Sample]:
    suffix = path.suffix.lower()
    if suffix in IMAGE_TYPES:
        return [Sample(path.read_bytes(), IMAGE_TYPES[suffix])]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text: {exc}") from None
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
    """Pre-built ``POST /predict/{model}`` requests, each of ``rows_per_request`` items; for
    ``model`` written ``name:version``, ``POST /predict/{name}/versions/{version}``."""
    import orjson

    if rows_per_request < 1:
        raise InputError("rows per request must be at least 1")
    name, _, version = model.partition(":")
    path = f"/predict/{urllib.parse.quote(name, safe='')}"
    if version:
        path += f"/versions/{urllib.parse.quote(version, safe='')}"
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
