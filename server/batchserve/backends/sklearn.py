"""scikit-learn estimators saved with joblib.

An item is a list of numbers (one per feature) or, when the estimator was
fitted with feature names, an object of feature name -> number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

from batchserve.backends.base import Backend, LoadError, cause
from batchserve.backends.capabilities import Samples
from batchserve.errors import InvalidInput, RowError

if TYPE_CHECKING:
    from batchserve.config import ModelConfig
    from batchserve.metrics import ModelMetrics

_NUMBER = frozenset((int, float))
_NOT_FINITE = RowError(InvalidInput("the model's output is not finite: features out of its range?"))

Prediction: TypeAlias = float | int | str | bool | dict[str, Any]
"""The estimator's prediction for a row, or ``{"label", "scores"}`` with ``output = "proba"``."""


class SklearnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: Literal["predict", "proba"] = "predict"
    """``predict``: the estimator's prediction; ``proba``: class probabilities (classifiers)."""


class SklearnBackend(Backend[list[float], Prediction]):
    Options = SklearnOptions
    input_kind = "rows"
    loads_pickles = True  # joblib.load runs arbitrary code from the file: trust the repository only
    predict_on_loop_when_cheap = True  # a small estimator's predict is tens of us, the hop more

    def __init__(self, config: ModelConfig, metrics: ModelMetrics | None = None) -> None:
        super().__init__(config, metrics)
        self._estimator: Any = None
        self._n_features = 0
        self._feature_names: list[str] | None = None
        self._feature_index: dict[str, int] = {}
        self._classes: list[Any] | None = None
        self._frame: Any = None  # pandas.DataFrame when the estimator was fitted with names
        self._predict: Callable[[Any], Any] = _not_loaded  # estimator.predict, or a same-result path

    def load(self, device: str) -> None:
        if device not in ("cpu", "auto"):
            raise LoadError(f"the sklearn backend runs on the CPU only, not on {device!r}")
        import joblib

        try:
            estimator = joblib.load(self.config.path)
        except FileNotFoundError:
            raise LoadError(f"artifact not found: {self.config.path}") from None
        except Exception as exc:
            raise LoadError(f"cannot load {self.config.path} with joblib: {cause(exc)}") from None
        if not hasattr(estimator, "predict"):
            raise LoadError(f"{self.config.path} holds a {type(estimator).__name__}, not an estimator")
        n_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(n_features, int):
            raise LoadError(f"{type(estimator).__name__} is not fitted (no n_features_in_)")
        names = getattr(estimator, "feature_names_in_", None)
        self._feature_names = None if names is None else [str(n) for n in names]
        self._feature_index = {n: i for i, n in enumerate(self._feature_names or [])}
        self._n_features = n_features
        if self.options.output == "proba":
            if not hasattr(estimator, "predict_proba"):
                raise LoadError(f"options.output = 'proba' but {type(estimator).__name__} "
                                "has no predict_proba")
            self._classes = estimator.classes_.tolist()
        self._estimator = estimator
        if self._feature_names is not None:
            # Fitted on a data frame: predict on one too, so sklearn can check the names.
            try:
                import pandas
            except ImportError:
                raise LoadError("the estimator was fitted with feature names; "
                                "install pandas to serve it") from None
            self._frame = pandas.DataFrame
        fast = linear_predict(estimator) if self._frame is None else None
        self._predict = fast or estimator.predict

    def warmup(self) -> None:
        self.predict_batch([[0.0] * self._n_features] * 2)

    def preprocess(self, item: Any, parameters: Any) -> list[float]:
        if isinstance(item, dict):
            return self._from_mapping(item)
        if not isinstance(item, list):
            raise InvalidInput(f"expected a list of {self._n_features} numbers"
                               f"{' or an object of feature values' if self._feature_names else ''}"
                               f", got {type(item).__name__}")
        if len(item) != self._n_features:
            raise InvalidInput(f"expected {self._n_features} features, got {len(item)}")
        # every value an int or float, and their sum finite (no NaN or infinity among them): two
        # C loops; a row that fails is looked at value by value, for the message
        if _NUMBER.issuperset(map(type, item)) and math.isfinite(sum(item)):
            return item
        for position, value in enumerate(item):
            if type(value) not in _NUMBER or not math.isfinite(value):
                raise InvalidInput(f"feature {position} must be a finite number, got {value!r:.40}")
        return item

    def _from_mapping(self, item: dict[str, Any]) -> list[float]:
        if self._feature_names is None:
            raise InvalidInput("this model was fitted without feature names; "
                               f"send a list of {self._n_features} numbers")
        unknown = sorted(set(item) - self._feature_index.keys())
        missing = [n for n in self._feature_names if n not in item]
        if unknown or missing:
            raise InvalidInput(f"feature names do not match: missing {missing}, unknown {unknown}")
        row = [item[name] for name in self._feature_names]
        for name, value in zip(self._feature_names, row, strict=True):
            if type(value) not in _NUMBER or not math.isfinite(value):
                raise InvalidInput(f"feature {name!r} must be a finite number, got {value!r:.40}")
        return row

    def predict_batch(self, rows: list[list[float]]) -> list[Prediction | RowError]:
        import numpy

        matrix = numpy.asarray(rows, dtype=numpy.float64)
        features: Any = matrix if self._frame is None else self._frame(
            matrix, columns=self._feature_names)
        if self._classes is not None:
            probabilities = self._estimator.predict_proba(features)
            finite = numpy.isfinite(probabilities).all(axis=1)
            return [
                {"label": self._classes[int(p.argmax())],
                 "scores": {str(c): float(v) for c, v in zip(self._classes, p, strict=True)}}
                if ok else _NOT_FINITE
                for p, ok in zip(probabilities, finite.tolist(), strict=True)
            ]
        with numpy.errstate(over="ignore", invalid="ignore"):  # non-finite rows are checked below
            predictions = self._predict(features)
        result: list[Prediction | RowError] = predictions.tolist()
        if predictions.dtype.kind == "f":
            # JSON has no infinities (they would become null): those rows alone fail.
            finite = numpy.isfinite(predictions)
            if predictions.ndim > 1:
                finite = finite.reshape(len(predictions), -1).all(axis=1)
            if not finite.all():
                for index in numpy.flatnonzero(~finite).tolist():
                    result[index] = _NOT_FINITE
        return result

    # -- its kind, for the protocol adapters (backends/kinds.py: FeatureRows) ---------------------

    def feature_count(self) -> int:
        return self._n_features

    def class_labels(self) -> list[Any] | None:
        """The classifier's classes when ``options.output`` is ``proba``, else ``None``."""
        return self._classes

    def outputs_per_row(self) -> int:
        return 1  # not known before predicting: not every multi-output estimator says

    def describe(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "array of numbers", "length": self._n_features or None}
        if self._feature_names is not None:
            item["or"] = {"type": "object", "keys": self._feature_names}
        output: dict[str, Any] = (
            {"type": "object", "fields": {"label": "class", "scores": "class -> probability"}}
            if self.options.output == "proba" else {"type": "prediction (number or label)"}
        )
        return {"input": item, "output": output}

    # -- capabilities for the planner (backends/capabilities.py) ---------------------------------

    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        return ("cpu",)

    def fitted_estimator(self) -> Any:
        return self._estimator

    def sample_items(self) -> Samples:
        return Samples([[0.0] * self._n_features], f"a row of {self._n_features} zeros")


def _not_loaded(features: Any) -> Any:
    raise RuntimeError("predict_batch before load")


def linear_predict(estimator: Any) -> Callable[[Any], Any] | None:
    """``estimator.predict`` without sklearn's per-call input checks, for a linear model whose
    prediction is scikit-learn's generic ``X @ coef_ + intercept_`` (LinearRegression, Ridge,
    Lasso, ...); ``None`` for any other estimator, or one that overrides that path.

    sklearn's checks of a float64 matrix (``validate_data``: two dimensions, at least one row,
    ``n_features_in_`` columns, every value finite; feature names apply only to frames, which
    take sklearn's own path) cost ~100 us a call, more than a small batch's product itself. They
    are done here on the matrix (~2 us); a matrix that fails them goes to ``estimator.predict``,
    so it gets sklearn's own error. The product is the one sklearn computes, so the outputs are
    the same bits."""
    import numpy

    try:
        from sklearn.linear_model import _base
    except ImportError:
        return None
    generic = getattr(_base, "LinearModel", None)
    if generic is None or not isinstance(estimator, generic):
        return None
    model = type(estimator)
    plain_predicts = {getattr(generic, "predict", None),
                      getattr(getattr(_base, "MultiOutputLinearModel", None), "predict", None)}
    if (getattr(model, "_decision_function", None) is not getattr(generic, "_decision_function", 0)
            or model.predict not in plain_predicts
            or not isinstance(getattr(estimator, "coef_", None), numpy.ndarray)):
        return None
    n_features = estimator.n_features_in_

    def predict(matrix: Any) -> Any:
        if (not isinstance(matrix, numpy.ndarray) or matrix.dtype != numpy.float64
                or matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != n_features
                or not numpy.isfinite(matrix).all()):
            return estimator.predict(matrix)  # sklearn's own checks, and its error
        coef = estimator.coef_
        return (matrix @ coef if coef.ndim == 1 else matrix @ coef.T) + estimator.intercept_

    return predict
