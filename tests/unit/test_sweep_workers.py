"""recommend's workers dimension: the counts it tries, within the servers' cores, and how the
cores are shared between workers, instances and torch threads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from batchserve_planning.candidates import Candidate, Variant
from batchserve_planning.contention import cores_left
from batchserve_planning.ramp import RampSettings
from batchserve_planning.sweep import Sweep, layout_fits, threads_per_instance, worker_counts

from tests.support.hogs import spinning

TEXT = {"name": "m", "backend": "transformer", "path": "t"}
"""A torch backend whose table leaves torch_threads to torch."""


def test_auto_tries_powers_of_two_up_to_the_cores_and_the_cores() -> None:
    assert worker_counts("auto", 1) == [1]
    assert worker_counts("auto", 2) == [1, 2]
    assert worker_counts("auto", 4) == [1, 2, 4]
    assert worker_counts("auto", 12) == [1, 2, 4, 8, 12]


def test_counts_given_stay_within_the_cores() -> None:
    assert worker_counts("1,2", 2) == [1, 2]
    with pytest.raises(ValueError, match="--workers 3: the servers may use 2 cores"):
        worker_counts("1,3", 2)
    with pytest.raises(ValueError, match="--workers 0"):
        worker_counts("0", 2)
    with pytest.raises(ValueError, match="'auto' or comma-separated counts, not 'many'"):
        worker_counts("many", 2)


def test_more_workers_than_one_leave_every_instance_a_core() -> None:
    assert layout_fits(1, 2, 1)  # one worker: the instances asked for, as before workers
    assert layout_fits(2, 1, 2)
    assert not layout_fits(2, 2, 2)
    assert layout_fits(2, 2, 4)
    assert not layout_fits(4, 2, 4)


def test_torch_threads_split_the_cores_between_workers_and_instances() -> None:
    assert threads_per_instance(TEXT, 4, "cpu", 1, workers=2) == 2
    assert threads_per_instance(TEXT, 4, "cpu", 2, workers=2) == 1
    assert threads_per_instance(TEXT, 8, "cpu", 2, workers=2) == 2
    assert threads_per_instance(TEXT, 2, "cpu", 1, workers=1) is None  # torch's own choice
    assert threads_per_instance(TEXT, 2, "cuda", 1, workers=2) is None
    assert threads_per_instance({"name": "m", "backend": "sklearn", "path": "d"}, 2, "cpu", 1,
                                workers=2) is None


def test_beside_other_work_torch_threads_are_the_cores_it_leaves() -> None:
    assert threads_per_instance(TEXT, 2, "cpu", 1, workers=1, left=1) == 1  # not torch's own 2
    assert threads_per_instance(TEXT, 8, "cpu", 2, workers=1, left=6) == 3
    assert threads_per_instance(TEXT, 8, "cpu", 2, workers=2, left=2) == 1
    assert threads_per_instance(TEXT, 2, "cuda", 1, workers=1, left=1) is None
    given = {**TEXT, "options": {"torch_threads": 2}}  # the table's own choice stands
    assert threads_per_instance(given, 2, "cpu", 1, workers=1, left=1) is None
    assert cores_left(2, 2.0) == 1  # one spinning process per core: still one thread
    assert cores_left(2, 1.0) == 1
    assert cores_left(8, 2.1) == 6
    assert cores_left(2, 0.2) is None  # within BUSY_SHARE: the machine is the servers'
    assert cores_left(2, 0.4) is None  # leaves 1.6 cores: rounds to all of them
    assert cores_left(1, 1.0) is None  # one core: one thread already


@pytest.mark.timeout(60)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: one torch thread already")
def test_a_hardware_profile_keeps_torchs_threads_beside_other_work(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    args = argparse.Namespace(config=tmp_path / "models.toml", server_cpus=None)

    def sweep(profile: bool) -> Sweep:
        return Sweep(args, TEXT, [], RampSettings(slo_ms=100.0), tmp_path, profile=profile)

    with spinning(cores):  # every core kept busy, outside this process's tree
        plain, profile = sweep(False), sweep(True)
        assert plain.threads_cores(cores, [Variant("cpu")]) == 1
        assert "torch's threads are set to the 1 it left" in plain.notes[0]
        # A profile stands for a machine of its own: the threads it would have there.
        assert profile.threads_cores(cores, [Variant("cpu")]) is None and not profile.notes
        assert plain.threads_cores(cores, [Variant("cuda")]) is None  # no CPU threads to set


def test_a_candidates_workers_are_a_server_flag_not_model_configuration() -> None:
    candidate = Candidate(8, 0.0, 1, workers=2)
    assert candidate.serve_args() == ["--workers", "2"]
    assert Candidate(8, 0.0, 1).serve_args() == ["--workers", "1"]  # whatever BATCHSERVE_WORKERS says
    assert "workers" not in candidate.table({"name": "m", "backend": "sklearn", "path": "d"})
    assert candidate.label() == "batch 8, wait 0 ms, 2 workers x 1 inst"
    threaded = Candidate(16, 2.0, 2, torch_threads=1)
    assert threaded.label() == "batch 16, wait 2 ms, 1 worker x 2 inst x 1 thread"


def test_a_ramp_of_several_workers_goes_on_until_its_connections_reach_every_worker() -> None:
    # One worker: its batches fill at batch size x instances clients.
    assert Candidate(max_batch_size=1, max_wait_ms=0, instances=1).fill_clients() == 1
    assert Candidate(max_batch_size=8, max_wait_ms=0, instances=2).fill_clients() == 16
    # Two workers of batch 1: 2 clients fill them, but by the kernel's hash all 4 of 4 land in one
    # worker 1 time in 8 (a plateau that is one worker's); 8 a worker's share of 4 clients each.
    assert Candidate(max_batch_size=1, max_wait_ms=0, instances=1, workers=2).fill_clients() == 8
    assert Candidate(max_batch_size=32, max_wait_ms=0, instances=1, workers=2).fill_clients() == 64
