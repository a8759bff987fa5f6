"""int8 graphs by ONNX Runtime's quantisation tools, for ``batchserve export --quantize int8``.

Without calibration inputs the weights of the matrix products are quantised, per output channel
(per tensor, all-MiniLM-L6-v2's vectors fell to a cosine of 0.86 to float32's at worst, against
0.96), and the activations per batch as they run (dynamic quantisation: what suits
transformers, whose activation ranges vary from text to text). With them (a CNN's), the graph
is first prepared (shape inference, folding) and every activation gets a fixed scale from the
ranges the calibration inputs produce (static quantisation, QDQ format, weights per channel).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def quantize_int8(source: Path, target: Path, calibration: list[Any] | None) -> None:
    """``source``'s graph quantised to int8 at ``target``; static where ``calibration`` gives its
    first input's batches, dynamic otherwise."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        return
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(prepared, target, _Reader(prepared, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


class _Reader:
    """The calibration batches, as ONNX Runtime's ``CalibrationDataReader`` protocol reads them."""

    def __init__(self, graph: Path, batches: list[Any]) -> None:
        import onnx

        name = onnx.load(str(graph), load_external_data=False).graph.input[0].name
        self._feeds: Iterator[dict[str, Any]] = iter([{name: batch} for batch in batches])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)
