"""A loaded model's size and its activation memory per batch size, measured in this process.

The backend is built and loaded as the server would (``backend_class(...)(config)``),
then asked for its model through its optional capabilities: its ``torch.nn.Module``s
(parameters, buffers, bytes per dtype), its scikit-learn estimator (its fitted
arrays, pickled size) or its tree ensemble's summary (trees, depth, leaves).
Activation memory is what one ``predict_batch`` call adds at its peak: the CUDA
allocator's peak on GPU; on CPU the growth of the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``) over the resident set before the call, with glibc
told to map large blocks directly and trim freed memory, so that each measurement
starts from what the model itself holds.
"""

from __future__ import annotations

import ctypes
import gc
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve_planning.proctree import status_kib

if TYPE_CHECKING:
    from batchserve.backends.base import Backend

TIMED_CALLS = 2
"""Calls timed per batch size after one untimed call; the fastest is reported."""
BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def model_objects(backend: Backend[Any, Any]) -> tuple[list[Any], Any]:
    """The backend's torch modules (if any) and its scikit-learn-like estimator (or None), from
    its optional capabilities (``batchserve.backends.capabilities``)."""
    from batchserve.backends.capabilities import FittedEstimator, TorchModules

    modules = backend.torch_modules() if isinstance(backend, TorchModules) else []
    estimator = backend.fitted_estimator() if isinstance(backend, FittedEstimator) else None
    return modules, estimator


def model_size(backend: Backend[Any, Any]) -> dict[str, Any]:
    """Parameter count and bytes: per dtype for torch modules, fitted arrays for estimators;
    trees, depth and leaves for tree ensembles."""
    from batchserve.backends.capabilities import TreeEnsemble

    modules, estimator = model_objects(backend)
    size: dict[str, Any] = {"artifact_bytes": artifact_bytes(backend.config.path)}
    if isinstance(backend, TreeEnsemble):
        size.update(kind="trees", **backend.tree_summary()._asdict())
    elif modules:
        seen: set[int] = set()
        parameters = buffers = 0
        loaded: dict[str, int] = {}
        for module in modules:
            for kind, tensors in (("parameters", module.parameters()), ("buffers", module.buffers())):
                for tensor in tensors:
                    if id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    if kind == "parameters":
                        parameters += tensor.numel()
                    else:
                        buffers += tensor.numel()
                    dtype = str(tensor.dtype).removeprefix("torch.")
                    loaded[dtype] = loaded.get(dtype, 0) + tensor.numel() * tensor.element_size()
        size.update(kind="torch", parameters=parameters, buffer_elements=buffers,
                    weight_bytes={dtype: parameters * n for dtype, n in BYTES_PER_ELEMENT.items()},
                    loaded_bytes=loaded)
    elif estimator is not None:
        arrays = _fitted_arrays(estimator)
        by_dtype: dict[str, int] = {}
        for array in arrays:
            by_dtype[str(array.dtype)] = by_dtype.get(str(array.dtype), 0) + int(array.nbytes)
        size.update(kind="estimator", estimator=type(estimator).__name__,
                    parameters=sum(int(a.size) for a in arrays), loaded_bytes=by_dtype,
                    pickled_bytes=len(pickle.dumps(estimator)))
    else:
        size.update(kind="unknown", note="the backend offers no torch modules or estimator "
                    "(batchserve.backends.capabilities)")
    return size


def _fitted_arrays(value: Any, depth: int = 0, seen: set[int] | None = None) -> list[Any]:
    """numpy arrays held by an estimator's fitted attributes, nested estimators included."""
    import numpy as np

    seen = set() if seen is None else seen
    if id(value) in seen or depth > 4:
        return []
    seen.add(id(value))
    if isinstance(value, np.generic):
        return [np.asarray(value)]
    if isinstance(value, np.ndarray):
        return [value] if value.dtype != object else [a for v in value.flat
                                                      for a in _fitted_arrays(v, depth + 1, seen)]
    if isinstance(value, list | tuple):
        return [a for v in value for a in _fitted_arrays(v, depth + 1, seen)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _fitted_arrays(v, depth + 1, seen)]
    if hasattr(value, "get_params") and hasattr(value, "__dict__"):
        return [a for k, v in vars(value).items() if k.endswith("_") or k in ("steps", "estimators")
                for a in _fitted_arrays(v, depth + 1, seen)]
    return []


def artifact_bytes(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def format_bytes(value: float | None) -> str:
    """``48.7 MiB``: binary units, one decimal; ``—`` for None."""
    if value is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


# -- activation memory -------------------------------------------------------------------------


def _libc(mmap_threshold: int) -> Any:
    """glibc with large blocks mapped (and unmapped on free) from ``mmap_threshold`` bytes up."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold)
        return libc
    except (OSError, AttributeError):
        return None


def _status_kib(field: str) -> int | None:
    return status_kib("self", field)


def _settle(libc: Any) -> None:
    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)


def activation_memory(backend: Backend[Any, Any], rows_for: Any, batch_sizes: list[int],
                      device: str) -> list[dict[str, Any]]:
    """For each batch size: input bytes, peak bytes one ``predict_batch`` adds, and its time.

    ``rows_for(n)`` preprocesses ``n`` rows. Each size runs once first (one-time costs:
    kernel choice, caches), then once measured. Times come from a second pass with the
    allocator at its defaults (mapping every large block costs page faults on each call):
    the fastest of ``TIMED_CALLS`` calls after an untimed one.
    """
    on_cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
    libc = None if on_cuda else _libc(64 * 1024)
    if not on_cuda and _status_kib("VmHWM") is None:
        raise RuntimeError("measuring CPU memory needs Linux's /proc/self/status")
    results: list[dict[str, Any]] = []
    for size in batch_sizes:
        _settle(libc)
        before_rows = _resident(on_cuda)
        rows = rows_for(size)
        input_bytes = max(0, _resident(on_cuda) - before_rows)
        backend.predict_batch(rows)
        _settle(libc)
        base = _reset_peak(on_cuda)
        backend.predict_batch(rows)
        _sync(on_cuda)
        peak = _peak(on_cuda)
        del rows
        results.append({"batch_size": size, "input_bytes": input_bytes,
                        "activation_bytes": max(0, peak - base)})
    if libc is not None:
        _libc(32 * 2**20)  # glibc's largest dynamic threshold: blocks are reused again
    for result in results:
        rows = rows_for(result["batch_size"])
        backend.predict_batch(rows)
        seconds = float("inf")
        for _ in range(TIMED_CALLS):  # the best call: what the model costs when nothing interferes
            started = time.perf_counter()
            backend.predict_batch(rows)
            _sync(on_cuda)
            seconds = min(seconds, time.perf_counter() - started)
        result["seconds"] = seconds
        result["rows_per_s"] = result["batch_size"] / seconds
    return results


class PeakMeter:
    """The peak memory above a starting level, measured as ``activation_memory`` does: the CUDA
    allocator's peak on GPU; on CPU the growth of ``VmHWM`` over the resident set at ``start``,
    glibc mapping blocks from 64 KiB directly (so that freed memory leaves the resident set)
    until ``close``."""

    def __init__(self, device: str) -> None:
        self.on_cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
        if not self.on_cuda and _status_kib("VmHWM") is None:
            raise RuntimeError("measuring CPU memory needs Linux's /proc/self/status")
        self._libc = None if self.on_cuda else _libc(64 * 1024)
        self._base = 0

    def start(self) -> None:
        _settle(self._libc)
        self._base = _reset_peak(self.on_cuda)

    def peak(self) -> int:
        """Bytes above the level at ``start`` at the highest point since."""
        _sync(self.on_cuda)
        return max(0, _peak(self.on_cuda) - self._base)

    def close(self) -> None:
        if self._libc is not None:
            _libc(32 * 2**20)  # glibc's largest dynamic threshold: blocks are reused again


def resident_bytes(device: str) -> int:
    """What this process holds now: the CUDA allocator's bytes on GPU, the resident set on CPU."""
    return _resident(device.startswith("cuda") or (device == "auto" and _cuda_available()))


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _resident(on_cuda: bool) -> int:
    if on_cuda:
        import torch

        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return (_status_kib("VmRSS") or 0) * 1024


def _reset_peak(on_cuda: bool) -> int:
    """Reset the peak counter; return the current level it is measured against."""
    if on_cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return (_status_kib("VmRSS") or 0) * 1024


def _peak(on_cuda: bool) -> int:
    if on_cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    return (_status_kib("VmHWM") or 0) * 1024


def _sync(on_cuda: bool) -> None:
    if on_cuda:
        import torch

        torch.cuda.synchronize()
