"""Optional capabilities of a backend, for the capacity planner (``batchserve inspect``,
``batchserve recommend``); serving needs none of them.

A backend has a capability by having its method: the planner asks
``isinstance(backend, SampleItems)`` (or ``issubclass`` on the class, for
``DeviceSupport``), never the backend's name, and never its attributes. A
third-party backend adds them the same way; without them ``inspect`` asks for
``--inputs`` and reports no model size, and ``recommend`` tries the devices given.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable


class Samples(NamedTuple):
    items: list[Any]
    """Input items as a client sends them (before ``preprocess``): JSON values, or image bytes."""
    description: str
    """What they are, in a few words, for reports: ``a row of 10 zeros``."""


@runtime_checkable
class SampleItems(Protocol):
    def sample_items(self) -> Samples:
        """Representative inputs for measuring the loaded model (``inspect``'s default inputs)."""
        ...


@runtime_checkable
class TorchModules(Protocol):
    def torch_modules(self) -> list[Any]:
        """The loaded ``torch.nn.Module``s the model computes with, for its size and memory."""
        ...


@runtime_checkable
class FittedEstimator(Protocol):
    def fitted_estimator(self) -> Any:
        """The loaded scikit-learn-like estimator, for its fitted values and pickled size."""
        ...


class TreeSummary(NamedTuple):
    library: str
    """The library and its version: ``xgboost 3.1.2``."""
    objective: str
    """The objective the model file names: ``binary:logistic``, ``multiclass``, ..."""
    trees: int
    """Trees in the ensemble (a multi-class model has one per class and round)."""
    max_depth: int
    """The deepest leaf's depth (a lone leaf: 0)."""
    leaves: int
    """Leaves over all trees."""
    features: int


@runtime_checkable
class TreeEnsemble(Protocol):
    def tree_summary(self) -> TreeSummary:
        """The loaded tree ensemble's size: trees, depth, leaves, features."""
        ...


@runtime_checkable
class DeviceSupport(Protocol):
    @classmethod
    def supported_devices(cls) -> tuple[str, ...]:
        """Device kinds the backend runs on (``cpu``, ``cuda``); ``cuda:1`` is of kind ``cuda``."""
        ...


class InputSizes(NamedTuple):
    kind: str
    """What the model takes: ``image`` or ``text``."""
    unit: str
    """What a size counts: ``px`` (an image source's longer side) or ``tokens`` (per item,
    special tokens included)."""
    sizes: list[int]
    """The sizes measured unless asked for others, smallest first."""


@runtime_checkable
class SizedInputs(Protocol):
    def input_sizes(self) -> InputSizes:
        """The loaded model's kind of input and the sizes worth measuring its memory at."""
        ...

    def sized_items(self, size: int) -> Samples:
        """Inputs as a client sends them, each of ``size`` (in ``input_sizes().unit``); a
        ``ValueError`` for a size the model cannot take."""
        ...
