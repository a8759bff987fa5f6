"""How far a shadow version's outputs move from the primary's, item by item, by output kind:

- regression (a number, or a list of one): the absolute difference, and the relative one
  (over the primary's magnitude; infinite where the primary's output is 0 and the shadow's not);
- classification (``{"label", "scores"}``, or a top-k list of ``{"label", "probability"}``):
  whether the labels agree, and the probability shift: the largest change of one class's
  probability (top-k: of the primary's top label);
- embeddings (a list of several numbers): the cosine similarity.

Outputs of any other shape, or of two different kinds, are counted as ``other`` (not compared).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SHADOW_KINDS = ("regression", "classification", "embedding", "other")


@dataclass(frozen=True, slots=True)
class ItemDiff:
    """One item's comparison; ``score`` orders the worst items (the larger, the further)."""

    kind: str
    abs_diff: float = 0.0
    rel_diff: float = 0.0
    agreed: bool = True
    shift: float = 0.0
    cosine: float = 1.0

    @property
    def score(self) -> float:
        if self.kind == "regression":
            return self.rel_diff
        if self.kind == "classification":
            return (0.0 if self.agreed else 1.0) + self.shift
        if self.kind == "embedding":
            return 1.0 - self.cosine
        return 0.0


def compare(primary: Any, shadow: Any) -> ItemDiff:
    """How far ``shadow``'s output for one item is from ``primary``'s."""
    a, b = _number(primary), _number(shadow)
    if a is not None and b is not None:
        diff = abs(a - b)
        rel = diff / abs(a) if a else (0.0 if diff == 0 else math.inf)
        return ItemDiff("regression", abs_diff=diff, rel_diff=rel)
    if isinstance(primary, dict) and isinstance(shadow, dict) and "label" in primary and "label" in shadow:
        pa, pb = _scores(primary), _scores(shadow)
        shift = max((abs(pa.get(k, 0.0) - pb.get(k, 0.0)) for k in pa.keys() | pb.keys()), default=0.0)
        return ItemDiff("classification", agreed=primary["label"] == shadow["label"], shift=shift)
    if _top_k(primary) and _top_k(shadow):
        top = primary[0]
        same = next((c for c in shadow if c["label"] == top["label"]), None)
        shift = abs(float(top.get("probability", 0.0)) - float(same.get("probability", 0.0) if same else 0.0))
        return ItemDiff("classification", agreed=shadow[0]["label"] == top["label"], shift=shift)
    va, vb = _vector(primary), _vector(shadow)
    if va is not None and vb is not None and va.shape == vb.shape:
        norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
        return ItemDiff("embedding", cosine=float(va @ vb) / norm if norm else 0.0)
    return ItemDiff("other")


def _number(value: Any) -> float | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _vector(value: Any) -> np.ndarray[Any, Any] | None:
    if not isinstance(value, list) or len(value) < 2:
        return None
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.ndim == 1 else None


def _scores(output: dict[str, Any]) -> dict[str, float]:
    scores = output.get("scores", output.get("probabilities", {}))
    if not isinstance(scores, dict):
        return {}
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, int | float)}


def _top_k(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(c, dict) and "label" in c for c in value))
