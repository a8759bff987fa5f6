"""LightGBM boosters from their own text model files (``Booster.save_model``, usually ``.txt``).

Loaded with LightGBM's own loader (``lightgbm.Booster(model_str=...)``, from the file's bytes
once a child process has loaded and tried them: ``trees.probe``), never unpickled. The objective stored in the
file decides the outputs: ``binary``, ``multiclass`` and ``multiclassova`` are classifiers
(``{"label", "scores"}``, the scores being what ``Booster.predict`` gives: class probabilities,
one-vs-all ones for ``multiclassova``); any other objective answers the prediction, a number
per row. ``Booster.predict``'s defaults hold: the best iteration when the file has one, else
every tree. Features are the file's (its names too: LightGBM names unnamed columns
``Column_0``, ...); a categorical feature is sent as its integer code.

A LightGBM booster is not documented as safe to predict from on several threads at once, so
each of the model's ``instances`` predicts with a booster of its own, loaded from the same
file (memory: ``instances`` times the model's).
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.backends.base import LoadError
from batchserve.backends.capabilities import TreeSummary
from batchserve.backends.trees import TreeBackend, TreeModel, load_failure, tree_shape

if TYPE_CHECKING:
    import numpy as np

CLASSIFIERS = ("binary", "multiclass", "multiclassova")
"""Classifier objectives, as LightGBM writes them into its model files (aliases resolved)."""
PROBE = """
import sys, numpy, lightgbm
booster = lightgbm.Booster(model_str=sys.stdin.buffer.read().decode("utf-8"))
rows = numpy.zeros((2, booster.num_feature()))
rows[1] = numpy.nan
booster.predict(rows)
"""


class LightGBMBackend(TreeBackend):
    library = "LightGBM"
    probe_code = PROBE

    _boosters: queue.SimpleQueue[Any]
    _one: Any = None  # a booster to read the trees of

    def structure_problem(self, data: bytes, probed: bytes) -> str | None:
        from batchserve.backends.tree_checks import lightgbm_problem

        try:
            return lightgbm_problem(data.decode("utf-8"))
        except UnicodeDecodeError:  # the child's load says why
            return None

    def open_model(self, path: Path, data: bytes, device: str) -> TreeModel:
        if device not in ("cpu", "auto"):
            raise LoadError(f"the lightgbm backend runs on the CPU only, not on {device!r}")
        import lightgbm

        boosters: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.config.instances):
            try:  # from the bytes probed: the text model file, as Booster(model_file=) reads it
                booster = lightgbm.Booster(model_str=data.decode("utf-8"))
            except Exception as exc:  # LightGBMError, or a decoding error on a damaged file
                raise load_failure(path, "LightGBM", exc) from None
            boosters.put(booster)
        self._boosters = boosters
        objective = str(booster.params.get("objective", "")).split(" ")[0] or "unknown"
        classes = 0
        if objective in CLASSIFIERS:
            classes = max(2, booster.num_model_per_iteration())
        self._one = booster
        return TreeModel(booster.num_feature(), list(booster.feature_name()), objective, classes)

    def scores(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        booster = self._boosters.get()  # one per instance: never waits
        try:
            predicted = booster.predict(matrix, num_threads=self.threads)
        finally:
            self._boosters.put(booster)
        if self._labels is not None and predicted.ndim == 1:  # binary: P(class 1)
            import numpy

            return numpy.stack([1.0 - predicted, predicted], axis=1)
        return predicted  # type: ignore[no-any-return]

    def tree_summary(self) -> TreeSummary:
        import lightgbm

        deepest = leaves = 0
        trees = self._one.dump_model()["tree_info"]
        for tree in trees:
            depth, count = tree_shape(tree["tree_structure"], _children)
            deepest, leaves = max(deepest, depth), leaves + count
        return TreeSummary(f"lightgbm {lightgbm.__version__}", self.objective, len(trees), deepest,
                           leaves, self.feature_count())

    def unload(self) -> None:
        self._boosters = queue.SimpleQueue()
        self._one = None

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu",)


def _children(node: dict[str, Any]) -> list[Any]:
    return [node["left_child"], node["right_child"]] if "left_child" in node else []
