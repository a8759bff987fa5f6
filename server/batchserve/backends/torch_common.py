"""What the torch backends share: device and dtype choice, threads, weights, warm-up sizes.

Importing this module does not import torch; each function does, when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchserve.backends.base import LoadError, cause

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "float16", "bfloat16"]


class TorchOptions(BaseModel):
    """Options every torch backend takes."""

    model_config = ConfigDict(extra="forbid")

    dtype: DType = "float32"
    """Weights and activations; float16 and bfloat16 on GPU only."""
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    """Intra-op threads on CPU (torch.set_num_threads); default: the server's cores (a worker's
    share of them) over the model's instances."""


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is a LoadError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LoadError(f"device {device!r} requested but torch sees no CUDA GPU "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise LoadError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                            "GPU(s) are visible")
    return torch.device(device)


def resolve_dtype(name: DType, device: torch.device) -> torch.dtype:
    import torch

    if name != "float32" and device.type != "cuda":
        raise LoadError(f"dtype {name!r} runs on GPU only; use float32 on {device.type}")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def set_threads(options: TorchOptions, device: torch.device, instances: int = 1) -> None:
    """``options.torch_threads``; by default the cores this server may use (its affinity and
    cgroup quota; in one of several workers, that worker's share), split between the model's
    ``instances``. torch's own default, every physical core of the host, oversubscribes a
    container's CPU limit, and does so again in every worker and every instance."""
    import torch

    from batchserve.cluster.cores import available_cores, worker_cores

    threads = options.torch_threads or max(1, (worker_cores() or available_cores()) // instances)
    if device.type == "cpu":
        torch.set_num_threads(threads)


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state_dict from ``.safetensors`` or from ``.pt``/``.pth`` read with ``weights_only=True``
    (never an arbitrary pickle)."""
    if not path.is_file():
        raise LoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pt", ".pth"):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LoadError(f"cannot read {path} as a weights-only state_dict: {cause(exc)}") from None
        if not isinstance(state, dict):
            raise LoadError(f"{path} holds a {type(state).__name__}, not a state_dict")
        return state
    raise LoadError(f"weights must be .safetensors, .pt or .pth, not {path.name}")


def weights_note(path: Path) -> str:
    """Where weights came from, with the safetensors header's ``weights`` note when it has one.
    The file's name only: a pinned artifact is read through a path of its own (artifacts.py),
    and ``/models`` shows the configured path beside this."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            note = (handle.metadata() or {}).get("weights")
        if note:
            return f"{path.name} ({note})"
    return path.name


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Every power of two up to ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


class TorchModelParts:
    """The planner's capabilities (``backends/capabilities.py``) every torch backend has the
    same way: it runs on CPU or CUDA, and its one module is ``_model`` once loaded. Listed
    before ``Backend`` in a backend's bases."""

    _model: Any = None

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def torch_modules(self) -> list[Any]:
        return [self._model] if self._model is not None else []
