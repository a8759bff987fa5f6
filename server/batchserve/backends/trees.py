"""What the gradient-boosted tree backends (``xgboost``, ``lightgbm``) share.

Each loads its library's own model file with the library's own loader (never a pickle) and
learns from it what a row is (the feature count, and names where the file has them) and what
the model predicts (its objective): classifiers answer ``{"label", "scores"}`` as the
scikit-learn backend does with ``output = "proba"``, every other objective the prediction.

An item is a list of numbers, one per feature, or an object of feature name -> number. A tree
routes a missing value down the branch it learned for missing values, so ``null`` is a valid
feature value here (so is NaN, which only v2's binary tensors can carry); any other
non-finite number is refused, naming the feature. Each batch runs on ``options.threads`` CPU
threads of the library's own pool; by default the cores this process may use, split between
the model's ``instances``.

Both libraries can take the whole process down on some damaged files: LightGBM aborts
(``std::terminate``) on a truncated text model, and neither checks a tree's indices, so a
node index out of range may segfault a prediction, or not, depending on the memory it reads.
So the file's bytes are read once, loaded and tried on two rows (zeros, and all missing) in a
child process first (``probe``), their trees are checked to be trees over the model's features
(``tree_checks``: a crash in the child is no proof either way), and only bytes that passed
are loaded here: a bad file fails its own model's load, never the server.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchserve.backends.base import Backend, LoadError
from batchserve.backends.capabilities import Samples, TreeSummary
from batchserve.errors import InvalidInput, RowError

if TYPE_CHECKING:
    import numpy as np

    from batchserve.config import ModelConfig
    from batchserve.metrics import ModelMetrics

_NUMBER = (int, float)
_NOT_FINITE = RowError(InvalidInput("the model's output is not finite: features out of its range?"))

TreeOutput: TypeAlias = float | list[float] | dict[str, Any]
"""A prediction (a number, or a list for a model of several outputs), or a classifier's
``{"label", "scores"}``."""


class TreeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(default=None, ge=1, le=256)
    """CPU threads per batch (XGBoost's ``nthread``, LightGBM's ``num_threads``); default: the
    cores this process may use divided by ``instances``."""
    classes: list[str] | None = Field(default=None, min_length=2)
    """A classifier's class names, in the order of its class indices; default: the indices."""

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("class names must be distinct")
        return value


@dataclass(frozen=True)
class TreeModel:
    """What a loaded model file says about its rows and outputs."""

    n_features: int
    feature_names: list[str] | None
    objective: str
    n_classes: int
    """Classes of a classifier objective; 0 for any other objective."""
    n_outputs: int = 1
    """Values per row of a non-classifier (several targets or quantiles); 1: a number."""


def default_threads(instances: int) -> int:
    """The cores this process may use (its affinity; in one of several workers, this worker's
    share of the server's cores), shared between ``instances``."""
    from batchserve.cluster.cores import available_cores, worker_cores

    cores = worker_cores() or available_cores()
    return max(1, cores // instances)


PROBE_TIMEOUT_S = 300.0
"""Longest the child process may take to load and try a model file."""


def probe(path: Path, library: str, code: str, data: bytes,
          check: Callable[[bytes], str | None]) -> None:
    """Run ``code`` (which loads the model from its stdin and predicts two rows) in a child
    process on ``data``; ``LoadError`` naming ``path`` if ``check`` finds the trees malformed
    (given what the child wrote to its stdout), or if the child fails, crashes or hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                              timeout=PROBE_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise LoadError(f"cannot load {path} as a {library} model file: loading and trying it "
                        f"took over {PROBE_TIMEOUT_S:g} s") from None
    problem = check(done.stdout)  # first: it says more than a crash on a malformed tree
    if problem:
        raise LoadError(f"cannot load {path} as a {library} model file: {problem[:300]}")
    if done.returncode == 0:
        return
    lines = [line.strip() for line in (done.stdout + done.stderr).decode(errors="replace").splitlines()
             if line.strip()]
    fatal = [line for line in lines if "[Fatal]" in line or "Error" in line]
    said = (fatal or lines or [""])[-1]
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else ""
        said = f"{library} crashed on it ({name or done.returncode})" + (f" after: {said}" if said else "")
    said = said or f"its check exited with status {done.returncode}, saying nothing"
    raise LoadError(f"cannot load {path} as a {library} model file: {said[:300]}")


def load_failure(path: Path, library: str, exc: Exception) -> LoadError:
    """The LoadError for a model file its library refused (corrupt, truncated, not a model)."""
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return LoadError(f"cannot load {path} as a {library} model file: {reason}")


class TreeBackend(Backend[list[float], TreeOutput]):
    """A tree ensemble from its library's model file; subclasses open the file and predict."""

    Options = TreeOptions
    input_kind = "rows"
    library: ClassVar[str]
    """The library's name, for messages."""
    probe_code: ClassVar[str]
    """Python code that loads a model from its stdin's bytes with the library and predicts a
    row of zeros and a row of NaN (``probe``)."""

    def __init__(self, config: ModelConfig, metrics: ModelMetrics | None = None) -> None:
        super().__init__(config, metrics)
        self.threads = 1
        self._model = TreeModel(0, None, "", 0)
        self._index: dict[str, int] = {}
        self._labels: list[Any] | None = None
        self._keys: list[str] = []

    @abstractmethod
    def open_model(self, path: Path, data: bytes, device: str) -> TreeModel:
        """Load the model file ``data`` (read from ``path``, and already tried by ``probe``)
        with the library's loader, set to ``self.threads``; ``LoadError`` naming ``path`` if
        the library refuses it."""

    @abstractmethod
    def scores(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """For a float64 ``(rows, features)`` matrix with NaN for missing values: a classifier's
        class probabilities ``(rows, classes)``, else the predictions, ``(rows,)`` or
        ``(rows, outputs)``. Runs on the model's instance threads, several at once."""

    def load(self, device: str) -> None:
        path = self.config.path
        if not path.exists():
            raise LoadError(f"model file not found: {path}")
        if not path.is_file():
            raise LoadError(f"{path} is not a regular file")
        self.threads = self.options.threads or default_threads(self.config.instances)
        data = self.read(path)
        probe(path, self.library, self.probe_code, data, lambda out: self.structure_problem(data, out))
        model = self.open_model(path, data, device)
        names = model.feature_names
        self._index = {name: i for i, name in enumerate(names or [])}
        classes = self.options.classes
        if model.n_classes:
            if classes is not None and len(classes) != model.n_classes:
                raise LoadError(f"options.classes names {len(classes)} classes, but {path} is a "
                                f"{model.n_classes}-class classifier ({model.objective})")
            self._labels = list(classes) if classes is not None else list(range(model.n_classes))
            self._keys = [str(label) for label in self._labels]
        elif classes is not None:
            raise LoadError(f"options.classes is for classifiers; {path} has the objective "
                            f"{model.objective!r}")
        self._model = model

    @abstractmethod
    def structure_problem(self, data: bytes, probed: bytes) -> str | None:
        """What is wrong with the trees of the model file ``data`` (``tree_checks``), given what
        ``probe_code`` wrote to its stdout (``probed``), or ``None``."""

    def read(self, path: Path) -> bytes:
        """The model file's bytes (a subclass refuses what its library does not read)."""
        return path.read_bytes()

    def warmup(self) -> None:
        n = self._model.n_features
        self.predict_batch([[0.0] * n, [math.nan] * n])

    def preprocess(self, item: Any, parameters: Any) -> list[float]:
        n = self._model.n_features
        if isinstance(item, dict):
            return self._from_mapping(item)
        if not isinstance(item, list):
            named = " or an object of feature values" if self._model.feature_names else ""
            raise InvalidInput(f"expected a list of {n} numbers{named}, got {type(item).__name__}")
        if len(item) != n:
            raise InvalidInput(f"expected {n} features, got {len(item)}")
        return [_value(value, position) for position, value in enumerate(item)]

    def _from_mapping(self, item: dict[str, Any]) -> list[float]:
        names = self._model.feature_names
        if names is None:
            raise InvalidInput("this model file names no features; "
                               f"send a list of {self._model.n_features} numbers")
        unknown = sorted(set(item) - self._index.keys())
        missing = [name for name in names if name not in item]
        if unknown or missing:
            raise InvalidInput(f"feature names do not match: missing {missing[:20]}, unknown "
                               f"{unknown[:20]} (a missing value is null, not a left-out name)")
        return [_value(item[name], name) for name in names]

    def predict_batch(self, rows: list[list[float]]) -> list[TreeOutput | RowError]:
        import numpy

        matrix = numpy.array(rows, dtype=numpy.float64)
        with numpy.errstate(over="ignore", invalid="ignore"):  # non-finite rows are checked below
            predicted = self.scores(matrix)
        finite = numpy.isfinite(predicted)
        if predicted.ndim > 1:
            finite = finite.all(axis=1)
        result: list[TreeOutput | RowError]
        if self._labels is not None:
            labels, keys = self._labels, self._keys
            winners = predicted.argmax(axis=1).tolist()
            result = [{"label": labels[winner], "scores": dict(zip(keys, row, strict=True))}
                      for winner, row in zip(winners, predicted.tolist(), strict=True)]
        else:
            result = predicted.tolist()
        if not finite.all():  # JSON has no infinities: those rows alone fail
            for index in numpy.flatnonzero(~finite).tolist():
                result[index] = _NOT_FINITE
        return result

    # -- its kind, for the protocol adapters (backends/kinds.py: FeatureRows) ---------------------

    def feature_count(self) -> int:
        return self._model.n_features

    def class_labels(self) -> list[Any] | None:
        """A classifier's labels (class names, or indices), in the order of its scores; else None."""
        return self._labels

    def outputs_per_row(self) -> int:
        """Values per row of a non-classifier (1: a number)."""
        return self._model.n_outputs

    @property
    def objective(self) -> str:
        """The objective the model file names (``binary:logistic``, ``multiclass``, ...)."""
        return self._model.objective

    def describe(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "array of numbers or null (missing)",
                                "length": self._model.n_features or None}
        if self._model.feature_names is not None:
            item["or"] = {"type": "object", "keys": self._model.feature_names}
        output: dict[str, Any]
        if self._labels is not None:
            output = {"type": "object", "fields": {"label": f"class: one of {self._keys}",
                                                   "scores": "class -> probability"}}
        elif self._model.n_outputs > 1:
            output = {"type": "array of numbers", "length": self._model.n_outputs}
        else:
            output = {"type": "number"}
        output["objective"] = self._model.objective
        return {"input": item, "output": output}

    # -- capabilities for the planner (backends/capabilities.py) ---------------------------------

    @abstractmethod
    def tree_summary(self) -> TreeSummary:
        """Trees, depth, leaves and features of the loaded ensemble."""

    def sample_items(self) -> Samples:
        n = self._model.n_features
        return Samples([[0.0] * n], f"a row of {n} zeros")


def _value(value: Any, feature: int | str) -> float:
    """A feature value as a float; ``None`` and NaN are missing (NaN), anything else must be a
    finite number."""
    if value is None:
        return math.nan
    if type(value) not in _NUMBER:
        raise InvalidInput(f"feature {feature!r} must be a number or null, got {value!r:.40}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isinf(number):
        raise InvalidInput(f"feature {feature!r} must be finite (null for a missing value), "
                           f"got {value!r:.40}")
    return number


def tree_shape(root: Any, children: Callable[[Any], list[Any]]) -> tuple[int, int]:
    """(depth of the deepest leaf, leaves) of one tree of nested nodes, ``children(node)`` being
    a node's sub-nodes (none for a leaf); a lone leaf has depth 0. No recursion: deep trees
    don't reach Python's recursion limit."""
    deepest = leaves = 0
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        below = children(node)
        if below:
            stack.extend((child, depth + 1) for child in below)
        else:
            leaves += 1
            deepest = max(deepest, depth)
    return deepest, leaves
