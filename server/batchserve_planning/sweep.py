"""A ``recommend`` sweep: the candidate configurations, each measured on a server of its own.

Per device and dtype, ``Sweep.search`` measures workers at the configured max_batch_size,
then max_batch_size over powers of two around it with the workers that won (``ladder``: up while
a larger cap could help, down while a smaller one carries as much), then max_wait_ms and
instances around the best (or every combination); each
candidate gets a fresh ``batchserve serve`` (``serverproc``) and a load ``ramp``. The two
best are measured again, longer and in turn (``final_round``), and the pick once more, in turn with
its final-round server (``verify``; both in ``finals``).

Workers and instances share the cores given to the servers (``--server-cpus``, else this
process's affinity): with more than one worker, workers x instances stays within them
(``layout_fits``), and a torch model's threads split what is left (``threads_per_instance``): the
cores other work leaves, where it keeps some busy before the sweep (``contention.cores_left``).
"""

from __future__ import annotations

import argparse
import itertools
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve_planning.budget import Share, share_of
from batchserve_planning.candidates import Candidate, Outcome, Variant
from batchserve_planning.finals import Finals
from batchserve_planning.ladder import Run, around, batch_cap, batch_sizes, climb, start_size
from batchserve_planning.ramp import Step

if TYPE_CHECKING:
    from batchserve_planning.accuracy import Accuracy
    from batchserve_planning.load.inputs import Requests
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.ramp import RampSettings
    from batchserve_planning.replicas import ReplicaSet
    from batchserve_planning.serverproc import ManagedServer

FINALISTS = 2
"""Candidates measured again, longer, before the pick."""


def repository_table(config: Path) -> dict[str, Any]:
    """The ``[repository]`` table for a generated config elsewhere: the same root, made absolute
    (so the artifact is still inside it), and the same rules."""
    table = dict(tomllib.loads(config.read_text(encoding="utf-8")).get("repository", {}))
    table["root"] = str((config.parent / table.get("root", ".")).resolve())
    return table


def server_cores(server_cpus: set[int] | None) -> int:
    """The cores the candidates' servers may use: this process's (its affinity, capped by a
    cgroup CPU quota: ``available_cores``, the rule ``serve --workers auto`` follows), and of
    them only ``--server-cpus`` when given."""
    from batchserve.cluster.cores import available_cores

    cores = available_cores()
    return min(cores, len(server_cpus)) if server_cpus else cores


def worker_counts(text: str, cores: int) -> list[int]:
    """``--workers``: ``auto`` is 1, 2, 4, ... up to the cores, and the cores themselves
    (1, 2, 4, 8, 12 on 12 cores); or a comma-separated list, each within the cores."""
    if text == "auto":
        counts = batch_sizes(cores)
        return counts if counts[-1] == cores else [*counts, cores]
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"--workers: 'auto' or comma-separated counts, not {text!r}") from None
    for count in counts:
        if not 1 <= count <= cores:
            raise ValueError(f"--workers {count}: the servers may use {cores} core{'s' if cores > 1 else ''} "
                             "(--server-cpus, else this process's affinity); more workers than cores "
                             "only take turns on them")
    return counts


def layout_fits(workers: int, instances: int, cores: int) -> bool:
    """Whether ``workers`` x ``instances`` may run at once on ``cores``. One worker: any of the
    instances asked for (as before there were workers); more: every instance gets a core."""
    return workers == 1 or workers * instances <= cores


def threads_per_instance(base: dict[str, Any], cores: int, device: str, instances: int,
                         workers: int = 1, left: int | None = None) -> int | None:
    """Torch threads for each of ``instances`` in each of ``workers`` on CPU: the server's
    ``cores`` (``server_cores``), or the ``left`` of them other work leaves (``contention.cores_left``),
    split between them, for a torch backend whose table leaves ``torch_threads`` unset; else None
    (one instance in one worker on cores nothing else keeps busy: the server's own choice)."""
    if device != "cpu" or not takes_threads(base):
        return None
    if left is None and instances * workers == 1:
        return None
    return max(1, (left or cores) // (instances * workers))


def takes_threads(base: dict[str, Any]) -> bool:
    """Whether ``base`` is a torch backend's table that leaves ``torch_threads`` to the server."""
    from batchserve.backends import backend_class

    return ("torch_threads" not in base.get("options", {})
            and "torch_threads" in backend_class(base["backend"]).Options.model_fields)


class Sweep:
    def __init__(self, args: argparse.Namespace, base: dict[str, Any], samples: list[Any],
                 settings: RampSettings, out: Path, *, quota_cpus: float | None = None,
                 rerun: bool = True, profile: bool = False) -> None:
        """``quota_cpus``: a cgroup CPU quota for every server (a fractional profile), on top of
        ``args.server_cpus``. ``rerun``: the pick is started again after the final round
        (``verify``; ``--hardware`` has its open-loop re-run instead), and the budget keeps its time.
        ``profile``: the servers stand for another machine (``--hardware``), whose cores are not
        shared with this one's other work (``threads_cores``)."""
        self.args = args
        self.rerun = rerun
        self.quota_cpus = quota_cpus
        self.profile = profile
        self.base = {**base, "path": str((args.config.parent / base["path"]).resolve())}
        self.samples = samples
        self.settings = settings
        self.out = out
        self.bars: Bars | None = None
        self.started = time.monotonic()
        self.count = 0
        self.notes: list[str] = []
        """Decisions between candidates within each other's noise, in words."""
        self.finals = Finals(self)
        self.sent = ""
        """How the requests were sent (``Requests.description``), for the report."""
        self.share: Share | None = None
        """When the device, dtype and runtime being searched must end (s into the run; ``budget``)."""
        self.accuracy: Accuracy | None = None
        """Measures each candidate's drift, where the runtime and precision are searched."""

    @property
    def target(self) -> str:
        """What the requests name and the metrics are read of: the model, or ``name:version``
        (``--version``: ``/predict/{name}/versions/{version}``, that version's series)."""
        version = getattr(self.args, "version", None)
        return self.args.model if version is None else f"{self.args.model}:{version}"

    def search(self, combos: list[Variant]) -> tuple[list[Outcome], list[Candidate]]:
        """Per device, dtype and runtime (``Variant``): workers at the configured max_batch_size
        (``ladder.start_size``), going up until a count brings no more throughput than the best so
        far beyond the noise (more would only cost memory); then batch sizes around it with those
        workers (``ladder.around``); then waits and instances around the best (or the grid).
        Workers x instances stay within the cores. Workers come first: a quiet diabetes search on
        the 2-core VM spent its 300-s budget on the ladder and never measured 2 workers, which
        carried 1.8x one worker's best the day before. The ladder starts at the configured size:
        climbing from batch 1, it spent the budget on batch 1-8, none as fast as the configured 64."""
        args = self.args
        sizes = batch_sizes(batch_cap(args, self.base))
        waits = [float(w) for w in args.max_wait_ms.split(",")]
        instances = [int(i) for i in args.instances.split(",")]
        cores = server_cores(args.server_cpus)
        left = self.threads_cores(cores, combos)
        workers = worker_counts(args.workers, cores)
        grid = [(b, w, i, n) for b, w, i, n in itertools.product(sizes, waits, instances, workers)
                if layout_fits(n, i, cores)]
        outcomes: list[Outcome] = []
        skipped: list[Candidate] = []
        per_combo = len(grid) if args.full_grid \
            else len(sizes) + len(waits) + len(instances) + len(workers) - 3 + (len(workers) > 1)
        assert self.bars is not None
        self.overall = self.bars.add("sweep", per_combo * len(combos) + FINALISTS + 1)

        measured: dict[Candidate, Outcome] = {}

        def evaluate_each(candidates: list[Candidate]) -> list[Outcome]:
            """Each candidate's outcome, measured where the budget allows; once in a search (the
            configured size, where it carried nothing within the SLO, is on the ladder again)."""
            done = []
            for candidate in candidates:
                if candidate in measured:
                    done.append(measured[candidate])
                    continue
                if self._over_budget(outcomes):
                    skipped.append(candidate)
                    continue
                outcome = (self.accuracy and self.accuracy.left_out(candidate)) or self.evaluate(candidate)
                measured[candidate] = outcome
                outcomes.append(outcome)
                done.append(outcome)
            return done

        for index, combo in enumerate(combos):
            self.share = share_of(time.monotonic() - self.started, self.args.budget_s,
                                  self._checks_s(outcomes), len(outcomes), len(combos) - index)
            def candidate(size: int, wait: float, count: int, processes: int,
                          v: Variant = combo) -> Candidate:
                return Candidate(size, wait, count, v.device, v.dtype,
                                 threads_per_instance(self.base, cores, v.device, count, processes, left),
                                 processes, v.runtime, v.graph)

            if args.full_grid:
                evaluate_each([candidate(*point) for point in grid])
                continue

            def add_workers(best: Outcome | None) -> Outcome | None:
                """``best`` with more workers, while a count brings more throughput beyond the noise."""
                for count in workers[1:]:
                    if best is None or not layout_fits(count, best.candidate.instances, cores):
                        break
                    pivot = best.candidate
                    added = _best([best, *evaluate_each([candidate(pivot.max_batch_size, pivot.max_wait_ms,
                                                                    pivot.instances, count)])], self.notes)
                    if added is None or added is best:
                        break  # no more throughput from more workers, beyond the noise: stop adding them
                    best = added
                return best

            # The configured max_batch_size first, and the workers at it: on CPU what more cores buy
            # is the largest lever, and a budget spent on the ladder first left no time for it.
            # Then the ladder around it (``ladder.around``); where it carried nothing within the
            # SLO, the ladder from batch 1 (``ladder.climb``), and the workers after it.
            def run(workers: int) -> Run:
                return lambda size: evaluate_each([candidate(size, waits[0], instances[0], workers)])

            rows = self.settings.rows_per_request
            first = add_workers(_best(run(workers[0])(start_size(sizes, self.base))))
            if first is not None:
                best = _best(around(first, sizes, run(first.candidate.workers), rows, self.notes), self.notes)
            else:
                best = add_workers(_best(climb([], sizes, run(workers[0]), rows, self.notes), self.notes))
            if best is None:
                continue
            pivot = best.candidate
            tried = evaluate_each([candidate(pivot.max_batch_size, w, pivot.instances, pivot.workers)
                                   for w in waits[1:]])
            best = _best([best, *tried], self.notes) or best
            pivot = best.candidate
            evaluate_each([candidate(pivot.max_batch_size, pivot.max_wait_ms, i, pivot.workers)
                           for i in instances[1:] if layout_fits(pivot.workers, i, cores)])
        return outcomes, skipped

    def threads_cores(self, cores: int, combos: list[Variant]) -> int | None:
        """The cores other work leaves the servers (``contention.cores_left``), read before the
        first server starts, where a torch model's threads on CPU would be set to them (not with
        ``--hardware``: a profile's cores are those of the machine it stands for); said in the
        decisions where it sets them."""
        from batchserve_planning.contention import busy_cores, cores_left

        if self.profile or not takes_threads(self.base) \
                or all(v.device != "cpu" for v in combos):
            return None
        busy = busy_cores(self.args.server_cpus)
        left = cores_left(cores, busy)
        if left is not None:
            self.notes.append(
                f"other work kept {busy:.1f} of the servers' {cores} cores busy before the sweep: torch's "
                f"threads are set to the {left} it left (threads that wait for each other behind other "
                "work give figures that spread several times as much, at no more throughput)")
        return left

    def _over_budget(self, outcomes: list[Outcome]) -> bool:
        from batchserve_planning.budget import over_budget

        return over_budget(outcomes, time.monotonic() - self.started, self.args.budget_s, self.share,
                           self._checks_s(outcomes))

    def _checks_s(self, outcomes: list[Outcome]) -> float:
        """What the final round (and the re-run) will need of the budget, from ``outcomes``."""
        from batchserve_planning.budget import checks_s

        return checks_s(outcomes, self.args.budget_s, self.settings, FINALISTS, self.rerun)

    def evaluate(self, candidate: Candidate) -> Outcome:
        from batchserve_planning.load.scrape import ServerError
        from batchserve_planning.ramp import ramp

        assert self.bars is not None
        self.count += 1
        outcome = Outcome(candidate)
        started = time.monotonic()
        label = f"#{self.count} {candidate.label()}"
        self.bars.update(self.overall, status=f"{label}: starting the server")
        try:
            server = self.start_server(candidate, f"candidate-{self.count:02d}")
            outcome.start_s = time.monotonic() - started
        except ServerError as exc:
            outcome.error = str(exc)
            self.bars.print(f"{label}: did not start ({str(exc).splitlines()[0]})")
        else:
            try:
                if self.accuracy is not None:  # the outputs before the load: --max-drift may rule it out
                    self.accuracy.measure(candidate, server.url, outcome)
                outcome.steps = [] if outcome.excluded else ramp(
                    server.url, self.target, self.requests_for(server), self.settings, self.bars, label,
                    on_step=lambda _: server.sample_memory(), fill_clients=candidate.fill_clients())
            except (OSError, RuntimeError) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            finally:
                memory = server.peak_memory()
                if memory is not None:
                    outcome.peak_rss_bytes, outcome.processes = memory.bytes, memory.processes
                outcome.gpu_bytes = server.gpu_bytes()
                server.stop()
            best = outcome.best
            self.bars.print(f"{label}: " + (f"{best.rows_per_s:,.1f} rows/s at p99 {best.p99_ms:.1f} ms "
                                            f"({best.concurrency} clients)" if best else
                                            outcome.excluded or outcome.error or "nothing within the SLO"))
        outcome.seconds = time.monotonic() - started
        self.bars.update(self.overall, advance=1)
        return outcome

    def final_round(self, outcomes: list[Outcome]) -> list[tuple[Outcome, Step]]:
        """The best of a sweep is the luckiest of many short, noisy measurements: the sweep's pick
        (the simplest within the noise of the fastest) and the fastest other candidate are measured
        again, in turn on servers started together, until their means are known (``finals``).
        Where the re-run follows (``rerun``), the pick's server is kept for it (``close`` stops it)."""
        measured = [o for o in outcomes if o.best is not None]
        first = _best(measured)  # the sweep's pick: the simplest within the noise of the fastest
        others = sorted((o for o in measured if o is not first),
                        key=lambda o: o.best.rows_per_s if o.best else 0.0, reverse=True)
        ranked = ([first] if first is not None else []) + others[:FINALISTS - 1]
        return self.finals.final_round(ranked, self.rerun)

    def verify(self, pick: Outcome, predicted: Step) -> dict[str, Any]:
        """Start the pick afresh and measure it in turn with its final-round server (``finals``)."""
        return self.finals.verify(pick, predicted)

    def close(self) -> None:
        """Stop the final round's servers kept for a re-run that did not come."""
        self.finals.close()

    def start_server(self, candidate: Candidate, name: str) -> Any:
        from batchserve_planning.serverproc import ManagedServer

        config = self.write_config(candidate, name)
        server = ManagedServer(config, self.out / "logs" / f"{name}.log", cpus=self.args.server_cpus,
                               quota_cpus=self.quota_cpus, args=candidate.serve_args(),
                               grpc=self.args.protocol == "grpc")
        server.wait_ready()
        return server

    def write_config(self, candidate: Candidate, name: str) -> Path:
        """The models.toml a server of ``candidate`` runs, in logs/ as ``name``.toml."""
        from batchserve_planning.serverproc import toml_table

        config = self.out / "logs" / f"{name}.toml"
        config.write_text(toml_table(repository_table(self.args.config), "[repository]") + "\n"
                          + toml_table(candidate.table(self.base)))
        return config

    def requests_for(self, server: ManagedServer | ReplicaSet) -> Requests:
        """The requests to load ``server`` with, over ``--protocol``."""
        requests = self._build_requests(server)
        self.sent = requests.description
        return requests

    def _build_requests(self, server: ManagedServer | ReplicaSet) -> Requests:
        from batchserve_planning.load.inputs import build_requests

        url = server.url
        if self.args.protocol == "grpc":
            from batchserve_planning.load.grpc_client import build_grpc_requests
            from batchserve_planning.load.scrape import model_metadata

            assert server.grpc_port is not None  # start_server gave it one; --hardware is refused
            return build_grpc_requests(self.samples, model_metadata(url, self.args.model),
                                       model=self.args.model, port=server.grpc_port,
                                       version=getattr(self.args, "version", None) or "",
                                       rows_per_request=self.args.rows_per_request,
                                       parameters=self.args.parameters)
        host, _, port = url.removeprefix("http://").partition(":")
        return build_requests(self.samples, host=host, port=int(port), model=self.target,
                              rows_per_request=self.args.rows_per_request, image_mode=self.args.image_mode,
                              parameters=self.args.parameters)


def _best(outcomes: list[Outcome], notes: list[str] | None = None) -> Outcome | None:
    """The most throughput within the SLO, or the simplest within the noise of it (``choices.simplest``)."""
    from batchserve_planning.choices import simplest

    ranked = [(o, o.best) for o in outcomes if o.best is not None]
    if not ranked:
        return None
    best, _, note = simplest(ranked, "is kept for the rest of the search")
    if note is not None and notes is not None:
        notes.append(note)
    return best
