"""Any ONNX graph, served by ONNX Runtime (``backend = "onnx"``): its tensors as the graph
declares them.

``path`` is a ``.onnx`` file (or a folder holding ``model.onnx``). The inputs and outputs are
read from the graph (``backends/onnx_session.py``): names, element types, shapes, the first axis
the batch. An item of ``/predict`` is one row: for a graph of one input, the row's value (a
nested list of the input's shape without the batch axis, or a number); for several inputs, an
object of them by name. The output is the row of the one output, or an object of every output
by name. Over the Open Inference Protocol the tensors are the graph's own, named and shaped as
it declares them (``v2/codec.py``'s ``GraphTensorsCodec``).

Every item is checked against the graph before it is queued: its element type (an integer
input refuses fractions; values must fit the type), its shape (fixed axes exactly; free axes
at least 1), and its size (``max_item_values``). Rows whose free axes differ run as separate
groups of one shape. A group the runtime fails on is run again row by row, so that a row it
cannot compute (an index out of a table's range, say) fails alone, with a 400 for its request.

Importing this module does not import onnxruntime (``load`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from batchserve.backends.base import Backend, LoadError, cause
from batchserve.backends.onnx_session import Graph, SessionOptions, TensorSpec, open_session
from batchserve.backends.torch_common import warmup_sizes
from batchserve.errors import InvalidInput, RowError

log = logging.getLogger(__name__)

Row = tuple[np.ndarray[Any, Any], ...]
"""One row: each input's values, in the graph's order, without the batch axis."""


class OnnxOptions(SessionOptions):
    max_item_values: int = Field(default=1 << 22, ge=1)
    """Most values one input of one item may hold (its shape's product); a larger item is
    refused (400) before it is queued. The graph's fixed axes bound most inputs anyway."""


class OnnxBackend(Backend[Row, Any]):
    Options = OnnxOptions
    input_kind = "json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._graph: Graph | None = None

    def load(self, device: str) -> None:
        self._graph = open_session(self.config, self.options, device)

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise LoadError("the model is not loaded")
        return self._graph

    def warmup(self) -> None:
        """Zeros at every batch size the batcher is likely to form (free axes at 1)."""
        row = tuple(np.zeros([axis or 1 for axis in spec.shape], dtype=spec.dtype)
                    for spec in self.graph.inputs)
        for size in warmup_sizes(self.config.max_batch_size):
            for output in self.predict_batch([row] * size):
                if isinstance(output, RowError):
                    raise LoadError(f"the graph fails on zeros: {output.error.message}")

    def unload(self) -> None:
        self._graph = None

    # -- requests ------------------------------------------------------------------------

    def preprocess(self, item: Any, parameters: Any) -> Row:
        inputs = self.graph.inputs
        if len(inputs) == 1:
            return (self._tensor(inputs[0], item),)
        names = [spec.name for spec in inputs]
        if not isinstance(item, Mapping) or set(item) != set(names):
            got = sorted(item)[:8] if isinstance(item, Mapping) else type(item).__name__
            raise InvalidInput(f"expected an object of the graph's inputs {names}, got {got}")
        return tuple(self._tensor(spec, item[spec.name]) for spec in inputs)

    def _tensor(self, spec: TensorSpec, value: Any) -> np.ndarray[Any, Any]:
        """``value`` as ``spec``'s element type and shape; ``InvalidInput`` naming the input."""
        try:
            return check_value(spec, value, self.options.max_item_values)
        except InvalidInput as exc:
            raise InvalidInput(f"input '{spec.name}': {exc.message}") from None

    def predict_batch(self, rows: list[Row]) -> list[Any]:
        outputs: list[Any] = [None] * len(rows)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(tuple(array.shape for array in row), []).append(index)
        for members in groups.values():
            for index, output in zip(members, self._run_group([rows[i] for i in members]), strict=True):
                outputs[index] = output
        return outputs

    def _run_group(self, rows: list[Row]) -> list[Any]:
        """Outputs of rows of one shape; run again one by one where the whole group fails."""
        try:
            return self._run(rows)
        except Exception as exc:  # onnxruntime's own exception types
            if len(rows) == 1:
                return [RowError(InvalidInput(f"the graph cannot compute this item: {cause(exc)}"))]
            log.info("model %s: a group of %d rows failed (%s); running them one by one",
                     self.config.name, len(rows), cause(exc))
            return [output for row in rows for output in self._run_group([row])]

    def _run(self, rows: list[Row]) -> list[Any]:
        graph = self.graph
        if graph.fixed_batch and len(rows) > 1:  # max_batch_size = 1 keeps this from happening
            return [output for row in rows for output in self._run([row])]
        feed = {spec.name: np.stack([row[n] for row in rows])
                for n, spec in enumerate(graph.inputs)}
        results = graph.session.run(None, feed)
        for spec, result in zip(graph.outputs, results, strict=True):
            if result.shape[:1] != (len(rows),):
                raise RuntimeError(f"output '{spec.name}' has {result.shape[:1]} rows for "
                                   f"{len(rows)} inputs: the graph does not keep the batch axis")
        if len(results) == 1:
            values: list[Any] = results[0].tolist()
            return values
        columns = [result.tolist() for result in results]
        return [{spec.name: column[n] for spec, column in zip(graph.outputs, columns, strict=True)}
                for n in range(len(rows))]

    def describe(self) -> dict[str, Any]:
        graph = self._graph
        if graph is None:
            return {"input": "the graph's inputs (once loaded)", "output": "the graph's outputs"}
        return {"input": [_described(spec) for spec in graph.inputs],
                "output": [_described(spec) for spec in graph.outputs],
                "item": "the one input's value" if len(graph.inputs) == 1 else "an object of the inputs",
                "runtime": f"onnxruntime ({graph.provider})"}

    # -- its kind: backends/kinds.py's GraphTensors ------------------------------------

    def graph_tensors(self) -> tuple[Sequence[TensorSpec], Sequence[TensorSpec]]:
        graph = self._graph
        return (graph.inputs, graph.outputs) if graph is not None else ((), ())


def _described(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype,
            "shape": [-1, *(-1 if axis is None else axis for axis in spec.shape)]}


_KINDS_ALLOWED = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
"""numpy kinds of a client's values each kind of input takes: floats take integers too;
integers never take fractions; booleans take booleans only."""


def check_value(spec: TensorSpec, value: Any, max_values: int) -> np.ndarray[Any, Any]:
    """One item's value for the input ``spec``, as an array of its type and shape."""
    dtype = spec.numpy_dtype()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput("not a rectangular array of numbers") from None
    if 0 in array.shape:  # before the type: numpy types an empty list as float
        raise InvalidInput(f"an empty axis (shape {list(array.shape)})")
    if array.dtype.kind not in _KINDS_ALLOWED[dtype.kind]:
        what = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans"}[dtype.kind]
        raise InvalidInput(f"expected {what} ({spec.datatype}), got {_kind_name(array)}")
    want = len(spec.shape)
    if array.ndim != want or any(axis is not None and axis != got
                                 for axis, got in zip(spec.shape, array.shape, strict=True)):
        shape = [-1 if axis is None else axis for axis in spec.shape]
        raise InvalidInput(f"expected shape {shape} (-1: any size), got {list(array.shape)}")
    if array.size > max_values:
        raise InvalidInput(f"{array.size} values; at most {max_values} per item (max_item_values)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"values outside {spec.datatype}'s range {info.min} to {info.max}")
    with np.errstate(over="ignore"):  # an overflow is the check just below, not a warning
        converted = array.astype(dtype, copy=False)
    if dtype.kind == "f" and not np.isfinite(converted).all() and np.isfinite(array).all():
        raise InvalidInput(f"values outside {spec.datatype}'s range")
    return converted


def _kind_name(array: np.ndarray[Any, Any]) -> str:
    return {"f": "fractions", "i": "integers", "u": "integers", "b": "booleans",
            "U": "strings", "S": "bytes", "O": "mixed values"}.get(array.dtype.kind, str(array.dtype))
