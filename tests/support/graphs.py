"""Small ONNX graphs written by the tests (``onnx.helper``): what the onnx backend's tests load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.arange(6, dtype=np.float32).reshape(3, 2)
TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)
"""The embedding table of ``lookup``: 10 rows, so an id of 10 or more is out of its range."""


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def linear(path: Path, *, batch: str | int = "batch", opset: int = 17) -> Path:
    """``y = x @ WEIGHTS``: x FP32 [batch, 3], y FP32 [batch, 2]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "linear", [x], [y],
                              [numpy_helper.from_array(WEIGHTS, "w")])
    return _save(graph, path, opset)


def lookup(path: Path) -> Path:
    """Two inputs and two outputs, a free axis: ids INT64 [batch, tokens] and scale FP32 [batch];
    ``vectors`` = TABLE[ids] summed over the tokens, times scale (FP32 [batch, 2]), and ``count``,
    the tokens (INT64 [batch])."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch"])
    vectors = helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", 2])
    count = helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"])
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["gathered"]),
        helper.make_node("ReduceSum", ["gathered", "axis1"], ["summed"], keepdims=0),
        helper.make_node("Unsqueeze", ["scale", "axis1"], ["scale2"]),
        helper.make_node("Mul", ["summed", "scale2"], ["vectors"]),
        helper.make_node("Shape", ["ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["tokens"]),
        helper.make_node("Shape", ["scale"], ["batch_shape"]),
        helper.make_node("Expand", ["tokens", "batch_shape"], ["count"]),
    ]
    initializers = [numpy_helper.from_array(TABLE, "table"),
                    numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                    numpy_helper.from_array(np.array(1, dtype=np.int64), "one")]
    graph = helper.make_graph(nodes, "lookup", [ids, scale], [vectors, count], initializers)
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return _save(graph, path)
