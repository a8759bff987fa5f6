"""How far a model's outputs moved from a reference's on the same inputs: a runtime or a precision
against float32 torch (``batchserve export``, benchmarks/onnx_runtime.py).

Each kind of model has its measure: a classifier's top-1 agreement and largest probability
shift, an embedder's cosine to the reference vector, a regressor's absolute error. Outputs are
given as the backends answer them (``outputs_as_vectors`` turns them into rows of numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def outputs_as_vectors(outputs: Sequence[Any]) -> np.ndarray[Any, Any]:
    """Rows of numbers from a backend's outputs: a classifier's ``scores`` (label order), an
    image classifier's top-k (every class asked for: by index), or the numbers themselves."""
    rows = []
    for output in outputs:
        if isinstance(output, dict) and "scores" in output:
            rows.append(list(output["scores"].values()))
        elif isinstance(output, list) and output and isinstance(output[0], dict):
            row = [0.0] * len(output)
            for entry in output:
                row[entry["index"]] = entry["probability"]
            rows.append(row)
        else:
            rows.append(output if isinstance(output, list) else [output])
    return np.asarray(rows, dtype=np.float64)


def classifier_drift(reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]) -> dict[str, float]:
    """Probabilities (rows of classes): the share of rows whose top class agrees, and the largest
    change of any class's probability."""
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    return {"top1_agreement": agree, "max_probability_shift": float(np.abs(reference - candidate).max())}


def embedding_drift(reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]) -> dict[str, float]:
    """Vectors: the smallest and the mean cosine of each row to its reference."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def regression_drift(reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]) -> dict[str, float]:
    """Predictions: the largest absolute error, and the largest relative to the reference's spread."""
    error = float(np.abs(reference - candidate).max())
    spread = float(np.ptp(reference)) or 1.0
    return {"max_abs_error": error, "max_error_over_range": error / spread}


DRIFTS = {"classifier": classifier_drift, "embedding": embedding_drift, "regression": regression_drift}
"""The measure of each kind of model."""


def drift(kind: str, reference: Sequence[Any], candidate: Sequence[Any]) -> dict[str, float]:
    """``kind``'s measure of ``candidate``'s outputs against ``reference``'s (as backends answer)."""
    return DRIFTS[kind](outputs_as_vectors(reference), outputs_as_vectors(candidate))
