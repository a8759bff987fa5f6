"""A model loaded or reloaded as a whole, while serving: every version its repository entry
loads, swapped in together with the routing over them.

A load reads the model's entry in the repository file again (``repository_configs``: one
config per version the ``version_policy`` loads, or the model's one), then

1. checks the routing the new set would have (``routing.Router.reloaded``): a 400, and nothing
   changed, when the entry leaves out a version that management's routing gives traffic to;
2. stages a fresh copy of each version (built, loaded and warmed) while the old ones serve:
   one that fails aborts the others, and the old set serves on (a 409 naming it);
3. commits them in one step (``registry.ModelRegistry.replace``): the routing checked again
   and swapped in, each copy installed over its version's, a version the entry leaves out
   taken out; then the copies replaced drain what they admitted and are unloaded.

So a version that stays serves until its new copy is ready, a version the entry adds appears
with the routing, and a version it leaves out finishes what it admitted, then goes (a request
that found it mid-swap moves to the version the new routing picks: ``Router.successor``).
With worker processes, ``cluster/fanout.py`` runs step 2 on every worker, then step 3 on
every worker.
"""

from __future__ import annotations

from batchserve.config import ConfigError, ModelConfig, load_models
from batchserve.errors import LoadFailed, ModelNotFound
from batchserve.registry import ServedModel
from batchserve.state import AppState


def repository_configs(state: AppState, name: str) -> list[ModelConfig]:
    """``name``'s entry in the repository file, read again now: its versions' configs (the
    model's own, for a model without versions). Blocking (it reads the file)."""
    try:
        configs = load_models(state.settings.config)
    except ConfigError as exc:
        raise LoadFailed(f"the repository file cannot be used: {exc}") from None
    found = [c for c in configs if c.name == name]
    if not found:
        raise ModelNotFound(f"no model {name!r:.80} in {state.settings.config}")
    return found


async def stage(state: AppState, configs: list[ModelConfig]) -> list[ServedModel]:
    """Steps 1 and 2: a ready copy of each config, none installed; ``LoadFailed`` saying why
    (and which version) when one fails to load, the ones staged already unloaded."""
    state.router.reloaded(configs[0].name, configs)  # refused before any work
    return _ready(await state.registry.stage_all(configs))


def _ready(staged: list[ServedModel]) -> list[ServedModel]:
    """``staged``, all ready; else ``LoadFailed`` naming the one that failed (last)."""
    failed = staged[-1]
    if failed.state != "ready":
        version = failed.config.version
        raise LoadFailed(f"{failed.reason}" if version is None else f"version '{version}': {failed.reason}")
    return staged


async def commit(state: AppState, staged: list[ServedModel]) -> None:
    """Step 3: ``staged`` serve from now on, with the routing over them; if that routing is
    refused now (management changed it since the stage), they are unloaded and nothing
    changed."""
    try:
        await state.registry.replace(staged[0].config.name, staged, state.settings.shutdown_grace_s,
                                     lambda: _route(state, staged))
    except BaseException:
        await abort(state, staged)
        raise


def _route(state: AppState, staged: list[ServedModel]) -> None:
    """The routing over ``staged`` installed (it may refuse, raising: then nothing changed)."""
    name = staged[0].config.name
    state.router.install(name, state.router.reloaded(name, [m.config for m in staged]))


async def abort(state: AppState, staged: list[ServedModel]) -> None:
    """Unload staged copies that will not serve; what serves is untouched."""
    for model in staged:
        await state.registry.abort(model)


async def load(state: AppState, configs: list[ModelConfig]) -> None:
    """Load or reload one model (``configs``, its entry) in this process: stage, then commit,
    under one hold of the name's lock (``ModelRegistry.load``)."""
    state.router.reloaded(configs[0].name, configs)  # refused before any work
    try:
        _ready(await state.registry.load(configs, state.settings.shutdown_grace_s,
                                         lambda staged: _route(state, staged)))
    except LoadFailed as exc:
        raise LoadFailed(f"model '{configs[0].name}' failed to load: {exc.message}; the previous "
                         "version, if any, still serves") from None
