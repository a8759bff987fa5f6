"""Which version of a model serves a request: "a version is what admission resolves a name to".

``Router.resolve(name, version, routing_key)`` is the one resolution every protocol's adapter
goes through (``pipeline.py`` calls it at admission): a version named explicitly (v2's
``/v2/models/{name}/versions/{v}``, ``/predict/{name}/versions/{v}``), else one picked by the
model's weights: at random, or, with a routing key (``X-Routing-Key``), by the key's hash, so
that one key stays on one version while the weights stand. Each version's share is an interval
of [0, 1) laid out in the repository file's order; a key hashes to a point in it. When weights
change, a key moves only if its point changed interval: as few keys as the new weights allow
for two versions (a canary at 5% going to 10% moves 5% of the keys, all to the canary).

A model's ``Routing`` (weights and shadows) is immutable: a change (``management.py``) builds a
new one and swaps it in with one assignment, so a request sees the old or the new, never half.
The routing that a change replaced is kept for ``rollback``.

A reload of the model (``reload.py``) may change its set of versions; its routing then is
``reloaded``'s: the repository file's, unless management changed it (that stands, checked
against the new set).
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from batchserve.config import ModelConfig
from batchserve.errors import BatchserveError, InvalidInput, ModelNotFound, ModelVersionNotFound
from batchserve.registry import ModelRegistry, ServedModel
from batchserve.versions import check_sum

VERSION_HEADER = "X-Model-Version"
"""The response header naming the version that answered (models with versions only)."""
UNVERSIONED = "1"
"""The one version a model without versions has (v2's ``model_version``)."""
KEYS_CACHED = 8192
"""Routing keys whose points are kept (a few hundred kB)."""


@dataclass(frozen=True)
class Routing:
    """A model's traffic: each version's weight (in the repository file's order; they sum to 1)
    and each shadow's fraction of the answered requests."""

    weights: tuple[tuple[str, float], ...]
    shadows: tuple[tuple[str, float], ...] = ()
    _bounds: list[float] = field(init=False, repr=False, compare=False)
    _versions: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds, versions, total = [], [], 0.0
        for version, weight in self.weights:
            total += weight
            if weight > 0:  # an interval of its own: where it ends
                bounds.append(total)
                versions.append(version)
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "_versions", versions)

    def pick(self, point: float) -> str:
        """The version whose interval holds ``point`` (in [0, 1))."""
        index = bisect_right(self._bounds, point)
        # rounding: the sum may fall a hair short of 1, and the last interval takes the rest
        return self._versions[min(index, len(self._versions) - 1)]

    def as_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "shadows": dict(self.shadows)}


@lru_cache(maxsize=KEYS_CACHED)
def key_point(name: str, key: str) -> float:
    """Where routing key ``key`` of model ``name`` falls in [0, 1): stable across processes and
    restarts (a hash, not Python's salted ``hash``); the latest keys' points are kept (a sticky
    user sends many requests)."""
    digest = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Router:
    """Every versioned model's ``Routing``, and the resolution of a request to a version."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._routing: dict[str, Routing] = {}
        self._previous: dict[str, Routing] = {}
        self._managed: set[str] = set()
        """Models whose routing management changed (``apply``): it stands over a reload."""
        self._random = random.Random()
        for model in registry:
            config = model.config
            if config.version is not None and config.name not in self._routing:
                self._routing[config.name] = declared([m.config for m in registry.versions(config.name)])

    def routing(self, name: str) -> Routing | None:
        """``name``'s routing; ``None`` for a model without versions."""
        return self._routing.get(name)

    def resolve(self, name: str, version: str | None, routing_key: str | None) -> ServedModel:
        """The served model a request for ``name`` goes to: ``version`` if it names one (404,
        naming the versions there are, if it names another), else as the weights say."""
        routing = self._routing.get(name)
        if routing is None:  # a model without versions: itself, as version "1"
            if ":" in name:  # a version's registry key is no model name: its path names it
                raise ModelNotFound(f"unknown model {name!r:.80}; name a version in the path: "
                                    "/predict/{name}/versions/{version}")
            model = self.registry.get(name)
            if version is not None and version != UNVERSIONED:
                raise ModelVersionNotFound(f"model '{name}' has no version {version!r:.40}; its "
                                           f"versions: ['{UNVERSIONED}']")
            return model
        if version is None:
            point = self._random.random() if routing_key is None else key_point(name, routing_key)
            version = routing.pick(point)
        found = self.registry.get_version(name, version)
        if found is None:
            raise ModelVersionNotFound(f"model '{name}' has no version {version!r:.40}; its "
                                       f"versions: {[v for v, _ in routing.weights]}")
        return found

    def check(self, name: str, weights: dict[str, float] | None,
              shadows: dict[str, float] | None) -> Routing:
        """The routing ``name`` would have with these weights and shadows (``None``: unchanged);
        a 400 (``InvalidInput``) saying what is wrong, and nothing changed, if it cannot."""
        current = self._routing.get(name)
        if current is None:
            self.registry.get(name)  # 404 for an unknown model
            raise InvalidInput(f"model '{name}' declares no versions: it has no routing to change")
        known = [v for v, _ in current.weights]
        new_weights = dict(current.weights) if weights is None else weights
        new_shadows = dict(current.shadows) if shadows is None else shadows
        unknown = sorted((new_weights.keys() | new_shadows.keys()) - set(known))
        if unknown:
            raise InvalidInput(f"model '{name}' has no versions {unknown}; its versions: {known}")
        try:
            check_sum(new_weights)
        except ValueError as exc:
            raise InvalidInput(f"model '{name}': {exc}") from None
        bad = {v: f for v, f in new_shadows.items() if not (isinstance(f, float | int) and 0 < f <= 1)}
        if bad:
            raise InvalidInput(f"model '{name}': a shadow's fraction must be in (0, 1]; got {bad}")
        both = sorted(v for v, w in new_weights.items() if w > 0 and v in new_shadows)
        if both:
            raise InvalidInput(f"model '{name}': versions {both} take traffic, so they cannot be "
                               "shadows too")
        return Routing(tuple((v, float(new_weights.get(v, 0.0))) for v in known),
                       tuple((v, float(new_shadows[v])) for v in known if v in new_shadows))

    def promoted(self, name: str, version: str) -> Routing:
        """The routing with ``version`` taking all of ``name``'s traffic (no longer a shadow)."""
        current = self._routing.get(name)
        if current is not None and version not in dict(current.weights):
            raise ModelVersionNotFound(f"model '{name}' has no version {version!r:.40}; its "
                                       f"versions: {[v for v, _ in current.weights]}")
        shadows = {} if current is None else {v: f for v, f in current.shadows if v != version}
        return self.check(name, {version: 1.0}, shadows)

    def previous(self, name: str) -> Routing:
        """The routing the latest change replaced (what a rollback applies), checked against
        the versions there are now (a reload may have taken out one it names: a 400)."""
        self.check(name, None, None)
        previous = self._previous.get(name)
        if previous is None:
            raise InvalidInput(f"model '{name}': nothing to roll back (its routing never changed)")
        return self.check(name, dict(previous.weights), dict(previous.shadows))

    def apply(self, name: str, routing: Routing) -> None:
        """Swap ``routing`` in for ``name`` (one assignment: atomic for the requests)."""
        current = self._routing.get(name)
        if current is not None and current != routing:
            self._previous[name] = current
        self._routing[name] = routing
        self._managed.add(name)

    def reloaded(self, name: str, configs: list[ModelConfig]) -> Routing | None:
        """The routing ``name`` gets when ``configs`` (its repository entry, as the version
        policy loads it) become its versions: ``None`` for a model without versions; the
        entry's own (``declared``) unless management changed the routing; else that routing,
        over the new set: the versions that stay keep their weights and shadow fractions, a
        version the entry adds joins with no traffic (weight 0) or as the shadow the entry
        makes it, and a shadow the entry leaves out is dropped. A 400 (``InvalidInput``) when
        the entry leaves out a version that routing gives traffic to: nothing may change."""
        if not configs or configs[0].version is None:
            return None
        current = self._routing.get(name)
        if current is None or name not in self._managed:
            return declared(configs)
        versions = [c.version or "" for c in configs]
        gone = [v for v, weight in current.weights if weight > 0 and v not in versions]
        if gone:
            raise InvalidInput(
                f"model '{name}': its repository entry leaves out versions {gone}, which take "
                f"traffic ({dict(current.weights)}); move the traffic off them first "
                "(PUT .../routing or .../promote), then load")
        weights, shadows = dict(current.weights), dict(current.shadows)
        new_shadows = {c.version or "": c.shadow for c in configs
                       if c.shadow is not None and c.version not in weights}
        return Routing(tuple((v, weights.get(v, 0.0)) for v in versions),
                       tuple((v, shadows.get(v, new_shadows.get(v, 0.0))) for v in versions
                             if v in shadows or v in new_shadows))

    def install(self, name: str, routing: Routing | None) -> None:
        """Set the routing a reload gave ``name`` (``reloaded``); management's, if it stood,
        still counts as management's, and its ``rollback`` is kept. ``None``: no routing (the
        model has no versions now)."""
        if routing is None:
            self._routing.pop(name, None)
            self._previous.pop(name, None)
            self._managed.discard(name)
        else:
            self._routing[name] = routing

    def managed(self, name: str) -> bool:
        """Management changed ``name``'s routing (so a reload keeps it)."""
        return name in self._managed

    def successor(self, model: ServedModel) -> ServedModel | None:
        """Where a request that found ``model`` retired goes: the ready copy a reload put in its
        place; or, where the reload took its version out, the version the model's routing picks
        now; ``None`` when it was unloaded (or nothing ready serves the model)."""
        found = self.registry.current(model)
        if found is not None or model.config.key in self.registry:
            return found
        try:
            found = self.resolve(model.config.name, None, None)
        except BatchserveError:
            return None
        return found if found.ready and found is not model else None

    def describe(self, model: ServedModel) -> dict[str, Any]:
        """A version's place in its model's routing (for ``/models``): its weight and role."""
        config = model.config
        routing = self._routing.get(config.name)
        if config.version is None or routing is None:
            return {}
        weight = dict(routing.weights).get(config.version, 0.0)
        shadow = dict(routing.shadows).get(config.version)
        role = "shadow" if shadow is not None else "primary" if weight > 0 else "idle"
        return {"version": config.version, "weight": weight, "role": role, "shadow": shadow}


def declared(configs: list[ModelConfig]) -> Routing:
    """The routing a model's versions declare in the repository file (their ``weight`` and
    ``shadow``, as ``versions.expand`` set them), in the file's order."""
    return Routing(tuple((c.version or "", c.weight or 0.0) for c in configs),
                   tuple((c.version or "", c.shadow) for c in configs if c.shadow is not None))
