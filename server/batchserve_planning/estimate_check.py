"""The config-only estimate beside ``inspect``'s measurement, for the models batchserve serves.

For the text backends (``transformer``, ``embedding``) the model's ``config.json`` is sized as
``inspect --model-config`` sizes it (``configsize.py``, built on the meta device) and set beside what
``inspect`` measured: the parameter count of the loaded model, and the peak of one batch by tokens
per item and batch size (``memory_by_input``). The estimate counts what a forward pass holds
(``configsize.activation_bytes``) over the tokens of the largest forward call the backend makes
(a batch split by ``max_batch_tokens``); the measurement also holds the tokenised batch, the
attention mask and the pooled outputs, and on CPU the allocator's rounding. ``MARGIN`` is the
agreement expected (docs/planning.md, "`batchserve inspect --model-config`").

For resnet50 (torchvision's architecture, no ``config.json``) the architecture is built on the
meta device: its parameters, and its activations from a forward pass there (``meta_forward_peak``:
shapes only) against ``inspect``'s memory per batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARGIN = 0.35
"""The estimate is within 35% of the measured peak (estimate / measured in 0.65..1.35)..."""
MARGIN_FROM_BYTES = 4 * 2**20
"""...for batches whose measured peak is at least 4 MiB: below that the fixed costs of a call (the
tokenised batch, Python objects) and the resident set's page rounding outweigh the activations
(the estimate is then 0.5-0.9x)."""


def config_file(backend: Any) -> Path | None:
    """The ``config.json`` of a text backend's model folder, or None."""
    name = backend.config.backend
    root = Path(backend.config.path)
    if name == "embedding":
        from batchserve.backends.embedding import read_layout

        root = Path(read_layout(root, backend.options).transformer)
    elif name != "transformer":
        return None
    file = root / "config.json"
    return file if file.is_file() else None


def beside_measurement(backend: Any, report: dict[str, Any]) -> dict[str, Any] | None:
    """The estimate and the measurement side by side (the module's docstring); None for a backend
    with no config to size."""
    if backend.config.backend == "resnet50":
        return _resnet50(report)
    file = config_file(backend)
    if file is None:
        return None
    from batchserve_planning.configsize import activation_bytes, model_shape

    shape = model_shape(file)
    dtype = str(getattr(backend.options, "dtype", "float32"))
    budget = getattr(backend.options, "max_batch_tokens", None)
    result: dict[str, Any] = {
        "config": str(file), "parameters": shape.parameters,
        "measured_parameters": report["size"].get("parameters"), "dtype": dtype, "margin": MARGIN,
        "margin_from_bytes": MARGIN_FROM_BYTES,
        "activations": []}
    table = report.get("memory_by_input")
    if table and table["unit"] == "tokens":
        for tokens, peaks in zip(table["sizes"], table["peak_bytes"], strict=True):
            for batch, measured in zip(table["batch_sizes"], peaks, strict=True):
                rows = batch if budget is None else max(1, min(batch, budget // tokens))
                estimated = activation_bytes(shape, rows * tokens, dtype if dtype in ("float16", "bfloat16")
                                             else "float32", rows)
                result["activations"].append({
                    "tokens": tokens, "batch_size": batch, "forward_tokens": rows * tokens,
                    "estimate_bytes": estimated, "measured_bytes": measured,
                    "ratio": estimated / measured if measured else None,
                    "within_margin": (abs(estimated / measured - 1) <= MARGIN
                                      if measured >= MARGIN_FROM_BYTES else None)})
    return result


def _resnet50(report: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torchvision.models import resnet50

    with torch.device("meta"):
        model = resnet50().eval()
    parameters = sum(p.numel() for p in model.parameters())
    rows = []
    for row in report.get("memory") or []:
        batch, measured = row["batch_size"], row["activation_bytes"]
        estimated = meta_forward_peak(model, torch.empty(batch, 3, 224, 224, device="meta"))
        rows.append({"tokens": None, "batch_size": batch, "forward_tokens": None,
                     "estimate_bytes": estimated, "measured_bytes": measured,
                     "ratio": estimated / measured if measured else None,
                     "within_margin": (abs(estimated / measured - 1) <= MARGIN
                                       if measured >= MARGIN_FROM_BYTES else None)})
    return {"config": "torchvision.models.resnet50 (the backend's architecture)", "parameters": parameters,
            "measured_parameters": report["size"].get("parameters"), "activations": rows,
            "margin": MARGIN, "margin_from_bytes": MARGIN_FROM_BYTES,
            "note": "activations: a forward pass on the meta device, the largest sum of the layers' "
                    "outputs alive at once (no config-only formula for a convolutional network); "
                    "against inspect's memory per batch size (--batch-sizes)"}


def meta_forward_peak(model: Any, example: Any) -> int:
    """Bytes of the layers' outputs alive at once at the highest point of ``model(example)`` on the
    meta device (shapes only: nothing is computed or allocated): each leaf module's output counted
    from its forward hook until Python frees it (an in-place layer's output is its input)."""
    import weakref

    import torch

    live: dict[str, int] = {"now": 0, "peak": 0}
    tracked: set[int] = set()

    def track(tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or id(tensor) in tracked:
            return
        key, size = id(tensor), tensor.numel() * tensor.element_size()
        tracked.add(key)
        live["now"] += size
        live["peak"] = max(live["peak"], live["now"])

        def freed() -> None:
            live["now"] -= size
            tracked.discard(key)

        weakref.finalize(tensor, freed)

    def hook(module: Any, inputs: Any, output: Any) -> None:
        for tensor in output if isinstance(output, tuple) else (output,):
            track(tensor)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            track(example)
            base = live["peak"] = live["now"]
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return live["peak"] - base


def lines(check: dict[str, Any]) -> list[str]:
    """For ``inspect``'s text report."""
    from batchserve_planning.modelsize import format_bytes

    out = [f"estimate, no weights read ({check['config']}): {check['parameters']:,} parameters "
           f"(measured {check['measured_parameters']:,})"]
    if check.get("note"):
        out.append(f"({check['note']})")
    if check["activations"]:
        out += [f"| tokens per item | batch | tokens per forward call | estimate | measured peak | "
                f"estimate / measured (within {check['margin']:.0%} from 4 MiB) |",
                "|---|---|---|---|---|---|"]
        for row in check["activations"]:
            ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
            tokens = "—" if row["tokens"] is None else row["tokens"]
            forward = "—" if row["forward_tokens"] is None else f"{row['forward_tokens']:,}"
            out.append(f"| {tokens} | {row['batch_size']} | {forward} | "
                       f"{format_bytes(row['estimate_bytes'])} | {format_bytes(row['measured_bytes'])} | "
                       f"{ratio} |")
    return out
