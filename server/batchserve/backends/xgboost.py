"""XGBoost boosters from their own model files: ``.json`` or ``.ubj`` (``Booster.save_model``).

Loaded with XGBoost's own loader (``xgboost.Booster``, from the file's bytes once a child
process has loaded and tried them: ``trees.probe``), never unpickled. The objective stored in the
file decides the outputs: ``binary:logistic``, ``binary:logitraw``, ``multi:softprob`` and
``multi:softmax`` are classifiers (``{"label", "scores"}``, the scores being class
probabilities, from the margins for the last two of those that store none); any other
objective answers the prediction, a number per row, or a list for several targets or
quantiles. Every tree is used, as ``Booster.predict`` does. A categorical feature is sent as
its integer code. Predictions run through
``inplace_predict`` (no ``DMatrix`` per batch), which XGBoost documents as thread-safe, so
``instances`` share one booster. ``device = "cuda"`` needs an XGBoost built with CUDA (the
``xgboost`` wheel, not ``xgboost-cpu``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.backends.base import LoadError
from batchserve.backends.capabilities import TreeSummary
from batchserve.backends.trees import TreeBackend, TreeModel, load_failure, tree_shape

if TYPE_CHECKING:
    import numpy as np

SUFFIXES = (".json", ".ubj")
CLASSIFIERS = ("binary:logistic", "binary:logitraw", "multi:softprob", "multi:softmax")
PROBE = """
import os, sys, numpy, xgboost
out = os.fdopen(os.dup(1), "wb")  # the model as JSON, for tree_checks; logs go to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
booster = xgboost.Booster(model_file=bytearray(sys.stdin.buffer.read()))
out.write(booster.save_raw("json"))
out.close()
rows = numpy.zeros((2, booster.num_features()))
rows[1] = numpy.nan
booster.inplace_predict(rows)
"""


class XGBoostBackend(TreeBackend):
    library = "XGBoost"
    probe_code = PROBE

    _booster: Any = None
    _margins = False  # the objective stores no probabilities: they come from the margins
    _device = "cpu"
    _linear = False  # a gblinear booster: no trees

    def read(self, path: Path) -> bytes:
        if path.suffix not in SUFFIXES:
            raise LoadError(f"{path}: the xgboost backend reads XGBoost's own model files, "
                            f"{' or '.join(SUFFIXES)} (Booster.save_model), not "
                            f"{path.suffix or 'a file without a suffix'}")
        return path.read_bytes()

    def structure_problem(self, data: bytes, probed: bytes) -> str | None:
        from batchserve.backends.tree_checks import xgboost_problem

        if not probed:  # the child could not load it: its exit says why
            return None
        try:
            model = json.loads(probed)
        except ValueError:  # cut short by a crash after loading: its exit says why
            return None
        return xgboost_problem(model)

    def open_model(self, path: Path, data: bytes, device: str) -> TreeModel:
        import xgboost

        try:  # from the bytes probed; XGBoost tells JSON from UBJSON by their first bytes
            booster = xgboost.Booster(model_file=bytearray(data))
            config = json.loads(booster.save_config())
        except Exception as exc:  # XGBoostError, or a decoding error on a damaged file
            raise load_failure(path, "XGBoost", exc) from None
        self._device = _device(device, xgboost)
        booster.set_param({"nthread": self.threads, "device": self._device})
        learner = config["learner"]
        self._linear = learner["gradient_booster"]["name"] == "gblinear"
        objective = str(learner["objective"]["name"])
        classes = 0
        if objective in CLASSIFIERS:
            classes = max(2, int(learner["learner_model_param"].get("num_class", "0")))
            self._margins = objective in ("binary:logitraw", "multi:softmax")
        self._booster = booster
        n_features = booster.num_features()
        try:
            probe = self._predict(_zeros(1, n_features))  # the output's width, from the model itself
        except xgboost.core.XGBoostError:
            if device != "auto" or self._device == "cpu":
                raise
            self._device = "cpu"  # auto: built with CUDA, but no GPU to run on
            booster.set_param({"device": "cpu"})
            probe = self._predict(_zeros(1, n_features))
        names = booster.feature_names
        return TreeModel(n_features, list(names) if names else None, objective, classes,
                         1 if classes or probe.ndim == 1 else int(probe.shape[1]))

    def scores(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        predicted = self._predict(matrix)
        if self._labels is None:
            return predicted
        import numpy

        if predicted.ndim == 1:  # binary: P(class 1), or its margin
            positive = 1.0 / (1.0 + numpy.exp(-predicted)) if self._margins else predicted
            return numpy.stack([1.0 - positive, positive], axis=1)
        if self._margins:  # multi:softmax keeps only the winning class: softmax of the margins
            shifted = numpy.exp(predicted - predicted.max(axis=1, keepdims=True))
            probabilities: np.ndarray[Any, Any] = shifted / shifted.sum(axis=1, keepdims=True)
            return probabilities
        return predicted

    def _predict(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The booster's values, ``(rows,)`` for one output per row, else ``(rows, outputs)``;
        margins where the objective's own output is no probability."""
        kind = "margin" if self._margins else "value"
        out: np.ndarray[Any, Any]
        if self._device == "cpu":
            out = self._booster.inplace_predict(matrix, predict_type=kind, missing=math.nan,
                                                validate_features=False, strict_shape=True)
        else:  # a host DMatrix: inplace_predict would warn on each batch of host data
            import xgboost

            data = xgboost.DMatrix(matrix, missing=math.nan, nthread=self.threads)
            out = self._booster.predict(data, output_margin=self._margins, validate_features=False,
                                        strict_shape=True)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out.reshape(len(matrix), -1)

    def tree_summary(self) -> TreeSummary:
        import xgboost

        deepest = leaves = 0
        dumps = [] if self._linear else self._booster.get_dump(dump_format="json")
        for dump in dumps:
            depth, count = tree_shape(json.loads(dump), lambda node: node.get("children", []))
            deepest, leaves = max(deepest, depth), leaves + count
        return TreeSummary(f"xgboost {xgboost.__version__}", self.objective, len(dumps), deepest,
                           leaves, self.feature_count())

    def unload(self) -> None:
        self._booster = None

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu", "cuda")


def _device(device: str, xgboost: Any) -> str:
    """XGBoost's device for the configured one: ``auto`` is CUDA when this XGBoost has it."""
    cuda = bool(xgboost.build_info().get("USE_CUDA"))
    if device == "cpu" or (device == "auto" and not cuda):
        return "cpu"
    if not cuda:
        raise LoadError(f"device {device!r}: this XGBoost ({xgboost.__version__}) is built without "
                        "CUDA (xgboost-cpu); install the xgboost package to run on a GPU")
    return "cuda" if device == "auto" else device


def _zeros(rows: int, columns: int) -> np.ndarray[Any, Any]:
    import numpy

    return numpy.zeros((rows, columns), dtype=numpy.float64)
