"""What a ``recommend`` run decides outside the sweep itself: the devices and dtypes to try, the
model's measured size (``batchserve inspect``), and the pick from a sweep's outcomes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.ramp import Step
    from batchserve_planning.sweep import Outcome


def device_dtypes(args: argparse.Namespace, base: dict[str, Any],
                   has_dtype: bool) -> list[tuple[str, str | None]]:
    from batchserve.backends import backend_class
    from batchserve.backends.capabilities import DeviceSupport

    devices = (args.devices or base.get("device", "cpu")).split(",")
    cls = backend_class(base["backend"])
    if issubclass(cls, DeviceSupport):
        kinds = cls.supported_devices()
        allowed = (*kinds, "auto") if "cuda" in kinds else kinds  # auto: cuda when there is one
        if any(d.partition(":")[0] not in allowed for d in devices):
            where = "the CPU only" if kinds == ("cpu",) else ", ".join(kinds)
            raise ValueError(f"the {base['backend']} backend runs on {where}: use --devices "
                             f"{','.join(kinds)}")
    combos: list[tuple[str, str | None]] = []
    for device in devices:
        if not has_dtype:
            combos.append((device, None))
            continue
        default = "float32,float16" if device.startswith("cuda") else "float32"
        dtypes = (args.dtypes or default).split(",")
        combos.extend((device, dtype) for dtype in dtypes if device.startswith("cuda") or dtype == "float32")
    return combos


def inspect_size(config: Path, model: str, bars: Bars, batch_cap: int) -> tuple[dict[str, Any], Any]:
    """Parameters and weight bytes, and peak memory by input size at batch sizes 1, 8 and
    ``batch_cap`` (the largest the sweep may try), from ``batchserve inspect`` in its own process."""
    bars.print(f"measuring the size of {model} and its memory by input size (batchserve inspect)")
    batches = ",".join(str(b) for b in sorted({1, min(8, batch_cap), batch_cap}))
    result = subprocess.run([sys.executable, "-m", "batchserve", "inspect", model, "--config", str(config),
                             "--batch-sizes", "none", "--input-batch-sizes", batches, "--json"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-500:]}, None
    report = json.loads(result.stdout)
    size: dict[str, Any] = report["size"]
    return size, report.get("memory_by_input")


def choose(outcomes: list[Outcome], finals: list[tuple[Outcome, Step]]) -> tuple[Outcome | None, Step | None]:
    """The pick and the figures that predict it: the final round's best within the SLO, else the
    sweep's (most rows/s within the SLO; within 2% of it, the smaller peak memory)."""
    inside = [(o, s) for o, s in finals if s.within_slo]
    if inside:
        return max(inside, key=lambda pair: pair[1].rows_per_s)
    ranked = [o for o in outcomes if o.best is not None]
    if not ranked:
        return None, None
    top = max(o.best.rows_per_s for o in ranked if o.best is not None)
    close = [o for o in ranked if o.best is not None and o.best.rows_per_s >= 0.98 * top]
    pick = min(close, key=lambda o: (o.peak_rss_bytes or 0, o.best.p99_ms if o.best else 0))
    return pick, pick.best
