"""Candidate machines for ``recommend --hardware``: profiles, and where each runs on this machine.

A profile (``[[profiles]]`` in a TOML file) is a machine one could rent: a name, a CPU share
(``cpus``, a count, fractional allowed; or ``cpuset``, explicit CPUs of this machine), an
optional GPU (``gpu``, a device index), memory (``memory_gib``) and a price per hour. A price
must say where it comes from (``price_source``) or be marked ``price_example = true``: a figure
to replace, never one presented as checked.

For sizing a model from its config (``inspect --model-config --hardware``, ``gpufit.py``) a profile
also gives its GPUs: ``gpu_memory_gib`` (each GPU's memory) and ``gpus`` (how many the machine has,
1 if not given); its price is the whole machine's. A profile without ``gpu_memory_gib`` has no GPU
to size for; ``recommend`` ignores both keys.

``place`` confines a profile to a share of this machine: whole CPUs by affinity (the first ones
the run may use, or the cpuset), a fractional count by a cgroup CPU quota on top, and the load
generator on the CPUs left over. A profile that takes every CPU the run may use is measured with
the generator sharing them (its figures are then a lower bound); one larger than that, a GPU
this machine lacks, or a quota where quotas don't work here is refused, with the reason.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 2**30


class HardwareError(ValueError):
    """A hardware file that can't be used, and why."""


@dataclass(frozen=True)
class Profile:
    name: str
    memory_bytes: int
    price_per_hour: float
    cpus: float | None = None
    """A CPU count (fractional: a quota), or None when ``cpuset`` gives the CPUs."""
    cpuset: tuple[int, ...] | None = None
    gpu: int | None = None
    """A CUDA device index, or None: CPU only."""
    price_source: str | None = None
    """Where the price comes from (who, which offer, when); None: an example price."""
    gpu_memory_bytes: int | None = None
    """Each GPU's memory, for sizing from a config; None: no GPU given."""
    gpus: int = 1
    """GPUs in the machine (with ``gpu_memory_bytes``); its price is for all of them."""

    @property
    def cpu_count(self) -> float:
        return float(len(self.cpuset)) if self.cpuset is not None else float(self.cpus or 0)

    @property
    def price_is_example(self) -> bool:
        return self.price_source is None

    def describe(self) -> str:
        cpus = (f"CPUs {','.join(map(str, self.cpuset))}" if self.cpuset is not None
                else f"{self.cpu_count:g} CPU{'s' if self.cpu_count != 1 else ''}")
        gpu = f" + GPU {self.gpu}" if self.gpu is not None else ""
        return f"{cpus}{gpu}, {self.memory_bytes / GIB:g} GiB"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpuset": list(self.cpuset) if self.cpuset is not None else None,
                "price_is_example": self.price_is_example, "described": self.describe()}


_KEYS = {"name", "cpus", "cpuset", "gpu", "memory_gib", "price_per_hour", "price_source", "price_example",
         "gpu_memory_gib", "gpus"}


def load_profiles(path: Path) -> list[Profile]:
    """The profiles of a hardware file; ``HardwareError`` names the profile and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HardwareError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HardwareError(f"{path}: not valid TOML: {exc}") from None
    tables = data.get("profiles")
    if not isinstance(tables, list) or not tables:
        raise HardwareError(f"{path}: no [[profiles]] tables")
    profiles = [_profile(table, f"{path}: profile {index + 1}") for index, table in enumerate(tables)]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        repeated = sorted(n for n in set(names) if names.count(n) > 1)
        raise HardwareError(f"{path}: profile names repeat: {repeated}")
    return profiles


def _profile(table: Any, where: str) -> Profile:
    if not isinstance(table, dict):
        raise HardwareError(f"{where}: not a table")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise HardwareError(f"{where}: needs a name")
    where = f"{where} ({name!r})"
    unknown = set(table) - _KEYS
    if unknown:
        raise HardwareError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    cpus, cpuset = table.get("cpus"), table.get("cpuset")
    if (cpus is None) == (cpuset is None):
        raise HardwareError(f"{where}: give either cpus (a count) or cpuset (a list of CPUs)")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0):
        raise HardwareError(f"{where}: cpus must be a positive number, not {cpus!r}")
    if cpuset is not None and (not isinstance(cpuset, list) or not cpuset or len(set(cpuset)) != len(cpuset)
                               or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                          for c in cpuset)):
        raise HardwareError(f"{where}: cpuset must be a list of distinct CPU numbers, not {cpuset!r}")
    gpu = table.get("gpu")
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
        raise HardwareError(f"{where}: gpu must be a device index (0, 1, ...), not {gpu!r}")
    memory = table.get("memory_gib")
    if isinstance(memory, bool) or not isinstance(memory, int | float) or memory <= 0:
        raise HardwareError(f"{where}: memory_gib must be a positive number, not {memory!r}")
    price = table.get("price_per_hour")
    if isinstance(price, bool) or not isinstance(price, int | float) or price < 0 or not math.isfinite(price):
        raise HardwareError(f"{where}: price_per_hour must be a number >= 0, not {price!r}")
    source, example = table.get("price_source"), table.get("price_example", False)
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise HardwareError(f"{where}: price_source must name where the price comes from")
    if (source is None) == (example is not True):
        raise HardwareError(f"{where}: say where the price comes from (price_source = \"...\") or mark "
                            "it an example to replace (price_example = true), one of the two")
    gpu_memory, gpus = table.get("gpu_memory_gib"), table.get("gpus")
    if gpu_memory is not None and (isinstance(gpu_memory, bool) or not isinstance(gpu_memory, int | float)
                                   or not 0 < gpu_memory < math.inf):
        raise HardwareError(f"{where}: gpu_memory_gib must be a positive number, not {gpu_memory!r}")
    if gpus is not None and (gpu_memory is None or isinstance(gpus, bool) or not isinstance(gpus, int)
                             or gpus < 1):
        raise HardwareError(f"{where}: gpus must be a positive integer, with gpu_memory_gib (each "
                            f"GPU's memory), not {gpus!r}")
    return Profile(name=name, memory_bytes=int(memory * GIB), price_per_hour=float(price),
                   cpus=float(cpus) if cpus is not None else None,
                   cpuset=tuple(cpuset) if cpuset is not None else None, gpu=gpu, price_source=source,
                   gpu_memory_bytes=None if gpu_memory is None else int(gpu_memory * GIB),
                   gpus=gpus or 1)


@dataclass(frozen=True)
class Placement:
    """Where a profile's servers run on this machine, and how cleanly that measures it."""

    profile: Profile
    server_cpus: frozenset[int]
    load_cpus: frozenset[int] | None
    """The generator's CPUs; None: it shares the servers' (the profile takes every CPU)."""
    quota_cpus: float | None
    """A CFS quota on top of the affinity (a fractional CPU count); None: whole CPUs only."""

    @property
    def isolated(self) -> bool:
        return self.load_cpus is not None

    @property
    def device(self) -> str:
        return "cpu" if self.profile.gpu is None else f"cuda:{self.profile.gpu}"

    def how(self) -> str:
        cpus = ",".join(map(str, sorted(self.server_cpus)))
        text = f"servers on CPU{'s' if len(self.server_cpus) > 1 else ''} {cpus}"
        if self.quota_cpus is not None:
            text += f" under a {self.quota_cpus:g}-CPU cgroup quota"
        if self.profile.gpu is not None:
            text += f", GPU {self.profile.gpu}"
        if self.load_cpus is not None:
            return text + f"; load generator on {','.join(map(str, sorted(self.load_cpus)))} (isolated)"
        return text + "; load generator sharing those CPUs (not isolated: its figures are a lower bound)"

    def to_dict(self) -> dict[str, Any]:
        return {"server_cpus": sorted(self.server_cpus),
                "load_cpus": sorted(self.load_cpus) if self.load_cpus is not None else None,
                "quota_cpus": self.quota_cpus, "isolated": self.isolated, "device": self.device,
                "how": self.how()}


@dataclass(frozen=True)
class Refusal:
    profile: Profile
    reason: str


def place(profile: Profile, machine_cpus: list[int], gpus: int,
          quota_problem: str | None) -> Placement | Refusal:
    """``profile`` confined to a share of ``machine_cpus`` (the CPUs this run may use, in order);
    ``gpus``: CUDA devices here; ``quota_problem``: why CPU quotas don't work here, or None."""
    if profile.gpu is not None and profile.gpu >= gpus:
        have = "no GPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}"
        return Refusal(profile, f"needs GPU {profile.gpu}; this machine has {have}")
    if profile.cpuset is not None:
        outside = sorted(set(profile.cpuset) - set(machine_cpus))
        if outside:
            return Refusal(profile, f"cpuset has CPUs {outside} that this run may not use "
                                    f"(it may use {','.join(map(str, machine_cpus))})")
        server = frozenset(profile.cpuset)
        quota = None
    else:
        whole = math.ceil(profile.cpu_count)
        if whole > len(machine_cpus):
            return Refusal(profile, f"needs {profile.cpu_count:g} CPUs; this run may use "
                                    f"{len(machine_cpus)} ({','.join(map(str, machine_cpus))})")
        server = frozenset(machine_cpus[:whole])
        quota = profile.cpu_count if profile.cpu_count != whole else None
        if quota is not None and quota_problem is not None:
            return Refusal(profile, f"a fractional CPU count needs a cgroup CPU quota; here: {quota_problem}")
    rest = frozenset(machine_cpus) - server
    return Placement(profile, server, rest or None, quota)


def gpu_count() -> int:
    """CUDA devices here, from ``nvidia-smi -L`` (no torch import); 0 without it."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
