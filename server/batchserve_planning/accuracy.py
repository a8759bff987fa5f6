"""What each ``recommend`` candidate does to the outputs: its drift from the float32 torch reference.

The reference (the model as configured, torch float32, batch 1) answers the first
``DRIFT_ITEMS`` sample inputs once, from a server of its own; every candidate answers the same
inputs from its own server, through ``POST /predict``, before its ramp. The measures are
``batchserve/drift.py``'s, by kind: a classifier's top-1 agreement and largest probability shift
(an image classifier's over every class), an embedder's cosine. ``--max-drift`` bounds them
(``LIMITS``); a candidate past a bound is not ramped, nor are the others of its device,
precision and runtime, and the report says why. The outputs are kept in results.json, so the
figures can be recomputed from it.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve_planning.candidates import Candidate, Outcome, Variant
    from batchserve_planning.load.inputs import Sample
    from batchserve_planning.sweep import Sweep

DRIFT_ITEMS = 32
"""Sample inputs the drift is measured on, at most."""
LIMITS = {"top1": ("top1_agreement", "at least"), "shift": ("max_probability_shift", "at most"),
          "cosine": ("min_cosine", "at least"), "abs": ("max_abs_error", "at most")}
"""``--max-drift`` names: the ``drift.py`` measure each bounds, and which way."""
KINDS = {"image": "classifier", "classifier": "classifier", "embedding": "embedding"}
"""The measure of each kind of model ``export`` writes (``runtimes.onnx_kind``)."""
NAMES = {"classifier": ("top1", "shift"), "embedding": ("cosine",), "regression": ("abs",)}
"""The ``--max-drift`` names of each measure."""
TIMEOUT_S = 120.0


def parse_limits(text: str | None, kind: str | None) -> dict[str, float]:
    """``--max-drift``: ``name=value`` pairs of ``LIMITS``, each a measure of ``kind``'s."""
    if not text:
        return {}
    if kind is None:
        raise ValueError("--max-drift bounds the drift of a model with runtimes and precisions to "
                         "search (resnet50, transformer, embedding backends)")
    limits: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in LIMITS:
            raise ValueError(f"--max-drift {part!r}: unknown measure {name!r}; choose from "
                             f"{', '.join(f'{n}=' for n in LIMITS)}")
        if name not in NAMES[KINDS[kind]]:
            raise ValueError(f"--max-drift {part!r}: a {KINDS[kind]}'s drift is measured as "
                             f"{' and '.join(NAMES[KINDS[kind]])}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise ValueError(f"--max-drift {part!r}: {value!r} is not a number") from None
    return limits


class Accuracy:
    def __init__(self, kind: str, limits: dict[str, float], samples: list[Sample], model: str,
                 parameters: dict[str, Any] | None = None) -> None:
        """``parameters``: the requests' (``--parameters``); an image classifier's answer every class."""
        self.kind = kind
        self.limits = limits
        self.model = model
        self.items = [_json_item(s) for s in samples[:DRIFT_ITEMS]]
        self.parameters = {**(parameters or {}), **({"top_k": 1000} if kind == "image" else {})}
        self.reference: list[list[float]] | None = None
        self.excluded: dict[Variant, str] = {}
        """Variants a candidate of which went past ``--max-drift``, and why."""

    def measure_reference(self, sweep: Sweep, device: str) -> None:
        """The float32 torch outputs, from a server of the model as configured (batch 1)."""
        from batchserve_planning.candidates import Candidate

        assert sweep.bars is not None
        sweep.bars.print("measuring the float32 torch reference's outputs on the sample inputs")
        server = sweep.start_server(Candidate(1, 0.0, 1, device, "float32", runtime="torch"), "reference")
        try:
            self.reference = self.fetch(server.url)
        finally:
            server.stop()

    def left_out(self, candidate: Candidate) -> Outcome | None:
        """``candidate`` left out unstarted, where another of its variant went past ``--max-drift``."""
        from batchserve_planning.candidates import Outcome

        reason = self.excluded.get(candidate.variant())
        return None if reason is None else Outcome(candidate, excluded=reason)

    def measure(self, candidate: Candidate, url: str, outcome: Outcome) -> None:
        """``candidate``'s outputs from its server at ``url``, their drift, and whether it is excluded."""
        import numpy as np
        from batchserve.drift import DRIFTS

        assert self.reference is not None
        outcome.outputs = self.fetch(url)
        outcome.drift = DRIFTS[KINDS[self.kind]](np.asarray(self.reference), np.asarray(outcome.outputs))
        reasons = [f"{name} {outcome.drift[LIMITS[name][0]]:.4g} (--max-drift {name}={bound:g}: "
                   f"{LIMITS[name][1]} {bound:g})" for name, bound in self.limits.items()
                   if _past(outcome.drift[LIMITS[name][0]], bound, LIMITS[name][1])]
        if reasons:
            outcome.excluded = "drift past --max-drift: " + "; ".join(reasons)
            self.excluded[candidate.variant()] = outcome.excluded + f" (measured on {candidate.label()})"

    def fetch(self, url: str) -> list[list[float]]:
        """The model's outputs for the items, one ``POST /predict``, as rows of numbers."""
        from batchserve.drift import outputs_as_vectors

        body = json.dumps({"model": self.model, "inputs": self.items, "parameters": self.parameters})
        request = urllib.request.Request(f"{url}/predict", body.encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                outputs = json.loads(response.read())["outputs"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"the sample inputs' outputs: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        rows: list[list[float]] = outputs_as_vectors(outputs).tolist()
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "measure": KINDS[self.kind], "limits": self.limits,
                "items": len(self.items),
                "reference": "torch float32, batch 1", "reference_outputs": self.reference}


def _past(value: float, bound: float, way: str) -> bool:
    return value < bound if way == "at least" else value > bound


def _json_item(sample: Sample) -> Any:
    if isinstance(sample.item, bytes):
        return {"b64": base64.b64encode(sample.item).decode("ascii")}
    return sample.item
