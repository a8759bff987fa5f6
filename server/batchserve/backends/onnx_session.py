"""What the ONNX Runtime backends share: the session and its options, and the graph's tensors.

``SessionOptions`` are the ``options`` every ONNX backend takes (``models.toml``); ``open_session``
makes an ``onnxruntime.InferenceSession`` from a ``.onnx`` file (or a folder holding
``model.onnx``), and ``Graph`` is what the session says of the graph's inputs and outputs:
names, element types and shapes, the first axis the batch. Every problem with a graph is a
``LoadError`` that names the file and, where it is one tensor's, that tensor.

A graph's batch axis: dynamic (a name or ``?`` in the graph) is what batching needs. A graph
exported with a fixed first axis of 1 is served only where ``max_batch_size = 1`` (each batch one
row); any other fixed batch axis is refused at load, with how to export it dynamic.

Importing this module does not import onnxruntime; ``open_session`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchserve.backends.base import LoadError, cause

if TYPE_CHECKING:
    import numpy as np

    from batchserve.config import ModelConfig

GRAPH_FILE = "model.onnx"
"""The graph's name inside a model folder (``batchserve export`` writes it so)."""
ELEMENT_TYPES: dict[str, tuple[str, str]] = {
    "tensor(float)": ("float32", "FP32"), "tensor(double)": ("float64", "FP64"),
    "tensor(float16)": ("float16", "FP16"), "tensor(int64)": ("int64", "INT64"),
    "tensor(int32)": ("int32", "INT32"), "tensor(int16)": ("int16", "INT16"),
    "tensor(int8)": ("int8", "INT8"), "tensor(uint8)": ("uint8", "UINT8"),
    "tensor(uint16)": ("uint16", "UINT16"), "tensor(uint32)": ("uint32", "UINT32"),
    "tensor(uint64)": ("uint64", "UINT64"), "tensor(bool)": ("bool", "BOOL"),
}
"""ONNX Runtime's element types served: the numpy dtype, and the Open Inference Protocol's name."""
_OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class SessionOptions(BaseModel):
    """Options every ONNX Runtime backend takes."""

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    """Threads one operator may use on the CPU; default: the server's cores (a worker's share of
    them) over the model's instances, as the torch backends' ``torch_threads``."""
    inter_op_threads: int = Field(default=1, ge=1, le=256)
    """Operators run at once (ONNX Runtime's parallel execution mode when above 1)."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime's graph optimisation level, applied when the session is made."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of the graph."""

    name: str
    dtype: str
    """numpy's name of its element type (``float32``)."""
    datatype: str
    """The Open Inference Protocol's name of its element type (``FP32``)."""
    shape: tuple[int | None, ...]
    """Every axis after the batch axis: its size, or ``None`` where the graph leaves it free."""

    def numpy_dtype(self) -> np.dtype[Any]:
        import numpy as np

        return np.dtype(self.dtype)


@dataclass(frozen=True, slots=True)
class Graph:
    """A loaded graph: the session, its inputs and outputs, and its batch axis."""

    session: Any
    """The ``onnxruntime.InferenceSession``."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fixed_batch: bool
    """The graph takes one row at a time (its batch axis is fixed at 1)."""
    metadata: dict[str, str]
    """The graph's metadata properties (``batchserve export`` writes labels there)."""
    provider: str
    """The execution provider it runs on: ``cpu`` or ``cuda``."""


def graph_file(path: Path) -> Path:
    """The ``.onnx`` file of ``path``: itself, or a folder's ``model.onnx``."""
    if path.is_dir():
        path = path / GRAPH_FILE
    if not path.is_file():
        raise LoadError(f"ONNX graph not found: {path} (path is a .onnx file, or a folder that "
                        f"holds {GRAPH_FILE})")
    return path


def open_session(config: ModelConfig, options: SessionOptions, device: str) -> Graph:
    """The graph of ``config.path`` in an ONNX Runtime session on ``device``; a ``LoadError``
    that says what is wrong with the file, or with which of its tensors."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise LoadError("the ONNX backends need onnxruntime: pip install 'batchserve[onnx]' "
                        f"({exc})") from None
    from batchserve.cluster.cores import available_cores, worker_cores

    path = graph_file(Path(config.path))
    provider = _provider(device, onnxruntime.get_available_providers())
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = options.intra_op_threads or max(
        1, (worker_cores() or available_cores()) // config.instances)
    settings.inter_op_num_threads = options.inter_op_threads
    if options.inter_op_threads > 1:
        settings.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
    settings.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                                _OPTIMIZATION[options.graph_optimization])
    settings.log_severity_level = 4  # fatal only: batchserve reports load and row failures itself
    providers: list[Any] = [_PROVIDERS[provider]]
    if provider == "cuda":
        index = int(device.partition(":")[2] or 0)
        providers = [(_PROVIDERS["cuda"], {"device_id": index}), _PROVIDERS["cpu"]]
    try:
        session = onnxruntime.InferenceSession(str(path), settings, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types, one per status code
        raise LoadError(f"ONNX Runtime {onnxruntime.__version__} cannot load {path}: "
                        f"{_reason(cause(exc))}") from None
    inputs = tuple(_spec(node, "input", path) for node in session.get_inputs())
    outputs = tuple(_spec(node, "output", path) for node in session.get_outputs())
    fixed = [node for node in session.get_inputs() if not _dynamic(node.shape[0])]
    if fixed and (any(node.shape[0] != 1 for node in fixed) or config.max_batch_size != 1):
        node = fixed[0]
        raise LoadError(
            f"{path}: input '{node.name}' has a fixed batch axis of {node.shape[0]} (shape "
            f"{list(node.shape)}); batchserve batches rows on the first axis, so export the graph "
            "with a dynamic one (torch.onnx.export's dynamic_axes or dynamic_shapes), or, for a "
            "graph fixed at 1, set max_batch_size = 1 to run one row at a time")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return Graph(session, inputs, outputs, bool(fixed), metadata, provider)


def _provider(device: str, available: list[str]) -> str:
    """``cpu`` or ``cuda`` for ``device`` (``auto``: CUDA where this onnxruntime has it)."""
    has_cuda = _PROVIDERS["cuda"] in available
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda"):
        if not has_cuda:
            raise LoadError(f"device {device!r} requested but this onnxruntime has no CUDA execution "
                            f"provider (it has {available}); install onnxruntime-gpu in its place")
        return "cuda"
    return "cpu"


def _reason(message: str) -> str:
    """ONNX Runtime's message, with what it means for the usual failures."""
    if "INVALID_PROTOBUF" in message or "Protobuf parsing failed" in message:
        return f"the file is not an ONNX graph (not a readable ONNX protobuf): {message}"
    if "opset" in message.lower():
        return f"the graph needs an operator set this onnxruntime lacks (upgrade it, or export " \
               f"with a lower opset_version): {message}"
    return message


def _dynamic(axis: Any) -> bool:
    return not isinstance(axis, int)


def _spec(node: Any, role: str, path: Path) -> TensorSpec:
    types = ELEMENT_TYPES.get(node.type)
    if types is None:
        raise LoadError(f"{path}: {role} '{node.name}' is of type {node.type}; the ONNX backends "
                        "serve numeric and boolean tensors only (a scikit-learn classifier converted "
                        "with its ZipMap: convert it with options={id(model): {'zipmap': False}})")
    shape = list(node.shape or [])
    if not shape:
        raise LoadError(f"{path}: {role} '{node.name}' is a scalar; every input and output must "
                        "have a batch axis first")
    rest = tuple(axis if isinstance(axis, int) else None for axis in shape[1:])
    return TensorSpec(node.name, types[0], types[1], rest)
