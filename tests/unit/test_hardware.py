"""Hardware profiles: the file's rules, and where each profile runs on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchserve_planning.hardware import (
    GIB,
    HardwareError,
    Placement,
    Profile,
    Refusal,
    load_profiles,
    place,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hardware.toml"
    path.write_text(text)
    return path


PRICED = 'price_per_hour = 0.1\nprice_source = "a provider, on-demand, 2026-12"\n'


def test_the_example_file_loads_and_marks_its_prices_as_examples() -> None:
    profiles = load_profiles(Path(__file__).parents[2] / "models" / "hardware.example.toml")
    assert [p.name for p in profiles] == ["1 vCPU", "2 vCPU", "4 vCPU + GPU"]
    assert all(p.price_is_example for p in profiles)
    assert profiles[2].gpu == 0 and profiles[0].memory_bytes == 2 * GIB


@pytest.mark.parametrize(("body", "message"), [
    ("", "no [[profiles]]"),
    ('[[profiles]]\ncpus = 1\nmemory_gib = 1\n' + PRICED, "needs a name"),
    ('[[profiles]]\nname = "a"\nmemory_gib = 1\n' + PRICED, "either cpus"),
    ('[[profiles]]\nname = "a"\ncpus = 1\ncpuset = [0]\nmemory_gib = 1\n' + PRICED, "either cpus"),
    ('[[profiles]]\nname = "a"\ncpus = 0\nmemory_gib = 1\n' + PRICED, "cpus must be a positive"),
    ('[[profiles]]\nname = "a"\ncpuset = [0, 0]\nmemory_gib = 1\n' + PRICED, "distinct"),
    ('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\ngpu = -1\n' + PRICED, "device index"),
    ('[[profiles]]\nname = "a"\ncpus = 1\n' + PRICED, "memory_gib"),
    ('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\nprice_per_hour = 0.1\n',
     "where the price comes from"),
    ('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\nprice_per_hour = 0.1\nprice_example = true\n'
     'price_source = "x"\n', "one of the two"),
    ('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\ncores = 2\n' + PRICED, "unknown keys"),
    ('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\n' + PRICED
     + '[[profiles]]\nname = "a"\ncpus = 2\nmemory_gib = 1\n' + PRICED, "repeat"),
    ("[[profiles]\n", "not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_profile_and_the_problem(tmp_path: Path, body: str,
                                                                   message: str) -> None:
    with pytest.raises(HardwareError, match=message.replace("[", r"\[")):
        load_profiles(write(tmp_path, body))


def profile(tmp_path: Path, line: str) -> Profile:
    (only,) = load_profiles(write(tmp_path, f'[[profiles]]\nname = "p"\nmemory_gib = 1\n{line}\n' + PRICED))
    return only


def test_a_profile_smaller_than_the_machine_leaves_the_rest_to_the_generator(tmp_path: Path) -> None:
    placed = place(profile(tmp_path, "cpus = 1"), [0, 1], 0, None)
    assert isinstance(placed, Placement)
    assert placed.server_cpus == {0} and placed.load_cpus == frozenset({1}) and placed.isolated
    assert placed.quota_cpus is None and placed.device == "cpu"
    assert "isolated" in placed.how()


def test_a_profile_of_every_cpu_shares_them_with_the_generator(tmp_path: Path) -> None:
    placed = place(profile(tmp_path, "cpus = 2"), [0, 1], 0, None)
    assert isinstance(placed, Placement)
    assert placed.server_cpus == {0, 1} and placed.load_cpus is None and not placed.isolated
    assert "lower bound" in placed.how()


def test_what_the_machine_cannot_host_is_refused(tmp_path: Path) -> None:
    for line, why in (("cpus = 4", "needs 4 CPUs"), ("cpus = 1\ngpu = 0", "no GPU"),
                      ("cpuset = [5]", "may not use"), ("cpus = 0.5", "quota")):
        refused = place(profile(tmp_path, line), [0, 1], 0, "no cpu controller")
        assert isinstance(refused, Refusal) and why in refused.reason, (line, refused)


def test_a_fractional_count_is_a_quota_on_whole_cpus(tmp_path: Path) -> None:
    placed = place(profile(tmp_path, "cpus = 1.5"), [2, 3, 5], 0, None)
    assert isinstance(placed, Placement)
    assert placed.server_cpus == {2, 3} and placed.quota_cpus == 1.5 and placed.load_cpus == frozenset({5})
    explicit = place(profile(tmp_path, "cpuset = [1]"), [0, 1], 0, None)
    assert isinstance(explicit, Placement) and explicit.server_cpus == {1}
    assert explicit.load_cpus == frozenset({0})
