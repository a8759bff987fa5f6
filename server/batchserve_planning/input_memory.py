"""Peak memory by input size and batch size, measured: ``batchserve inspect``'s ``memory_by_input``.

For a backend with sized inputs (``capabilities.SizedInputs``: images by their source's longer
side in px, texts by tokens per item), each size x batch size is run as the server runs a
batch: every item preprocessed (an image's JPEG decoded, resized and cropped; a text read),
then one ``predict_batch`` (a text batch tokenised, the forward pass). The figure is the peak
above what the process held before the batch (``modelsize.PeakMeter``: VmHWM growth on CPU,
the CUDA allocator's peak on GPU), after one unmeasured run of the same batch (one-time costs:
kernel choice, caches). The items are preprocessed one after another here; a server decodes
up to one image per request thread at once, so its preprocessing peak can be a few decodes
higher. Sizes do not order the figures by themselves: resnet50 decodes a large JPEG at a
reduced DCT scale (``options.decode = "draft"``) and resizes every source to the same crop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchserve_planning.modelsize import PeakMeter, format_bytes

if TYPE_CHECKING:
    from batchserve.backends.base import Backend

BATCH_CAP = 8
"""The middle batch size measured by default (with 1 and the configured max_batch_size)."""
UNIT_HEADERS = {"px": "source (px, longer side)", "tokens": "tokens per item"}


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """1, ``BATCH_CAP`` and ``max_batch_size``, none above ``max_batch_size``."""
    return sorted({1, min(BATCH_CAP, max_batch_size), max_batch_size})


def parse_sizes(text: str) -> list[int] | None:
    """``auto``: None (the backend's or the config's); ``none``: []; else comma-separated ints."""
    if text == "auto":
        return None
    if text == "none":
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise ValueError(f"expected 'auto', 'none' or comma-separated integers, not {text!r}") from None
    if sizes[0] < 1:
        raise ValueError(f"sizes must be positive, not {sizes[0]}")
    return sizes


def memory_by_input(backend: Backend[Any, Any], device: str, sizes: list[int] | None,
                    batch_sizes: list[int]) -> dict[str, Any] | None:
    """The table (the module's docstring), or None for a backend without sized inputs.
    ``sizes`` None: the backend's own. A ValueError names a size the model cannot take."""
    from batchserve.backends.capabilities import SizedInputs
    from batchserve.errors import InvalidInput, RowError

    if not isinstance(backend, SizedInputs):
        return None
    declared = backend.input_sizes()
    sizes = declared.sizes if sizes is None else sizes
    samples = [backend.sized_items(size) for size in sizes]
    parameters = backend.parse_parameters({})
    meter = PeakMeter(device)
    peaks: list[list[int]] = []
    preprocess_peaks: list[list[int]] = []
    try:
        for size, sample in zip(sizes, samples, strict=True):
            peaks.append([])
            preprocess_peaks.append([])
            for count in batch_sizes:
                batch = [sample.items[i % len(sample.items)] for i in range(count)]
                for measured in (False, True):
                    meter.start()
                    try:
                        rows = [backend.preprocess(item, parameters) for item in batch]
                    except InvalidInput as exc:
                        raise ValueError(f"{size} {declared.unit}: {exc.message}") from None
                    preprocessed = meter.peak()
                    outputs = backend.predict_batch(rows)
                    if measured:
                        peaks[-1].append(meter.peak())
                        preprocess_peaks[-1].append(preprocessed)
                    del rows
                    failed = [output for output in outputs if isinstance(output, RowError)]
                    if failed:
                        raise ValueError(f"{size} {declared.unit}: the model refused an item: {failed[0]}")
                    del outputs
    finally:
        meter.close()
    return {"kind": declared.kind, "unit": declared.unit, "sizes": sizes, "batch_sizes": batch_sizes,
            "peak_bytes": peaks, "preprocess_peak_bytes": preprocess_peaks,
            "items": [sample.description for sample in samples], "device": device,
            "method": _method(meter.on_cuda)}


def _method(on_cuda: bool) -> str:
    if on_cuda:
        return ("CUDA allocator peak (torch.cuda.max_memory_allocated) above the bytes held before "
                "the batch: preprocessing, then predict_batch (device JPEG decoding included); host "
                "memory not counted")
    return ("growth of the peak resident set (VmHWM) over the resident set before the batch: its "
            "items preprocessed one after another, then predict_batch")


def memory_by_input_lines(table: dict[str, Any]) -> list[str]:
    """A markdown table: a row per input size, a column per batch size; each cell the batch's
    peak and, in brackets, the part of it reached while preprocessing."""
    header = UNIT_HEADERS.get(table["unit"], table["unit"])
    lines = [f"| {header} | " + " | ".join(f"batch {n}" for n in table["batch_sizes"]) + " |",
             "|---" * (1 + len(table["batch_sizes"])) + "|"]
    for size, peaks, preprocess in zip(table["sizes"], table["peak_bytes"], table["preprocess_peak_bytes"],
                                       strict=True):
        cells = [f"{format_bytes(peak)} ({format_bytes(pre)} preprocessing)"
                 for peak, pre in zip(peaks, preprocess, strict=True)]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def memory_by_input_caption(table: dict[str, Any]) -> list[str]:
    """What the table measured and on which inputs, in a few lines (for above it)."""
    tokenised = (" (texts are tokenised with their batch, in predict_batch)"
                 if table["kind"] == "text" else "")
    return [f"peak memory of one batch by input size ({table['kind']}, {table['device']}): "
            f"{table['method']}{tokenised}",
            *(f"- {size} {table['unit']}: {item}"
              for size, item in zip(table["sizes"], table["items"], strict=True))]
