"""How the planner's reports write their figures: memory, rates, batch sizes."""

from __future__ import annotations

X = "\N{MULTIPLICATION SIGN}"


def mib_text(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def batch_text(value: float | None) -> str:
    """A mean batch size; None where the server's /metrics did not give one."""
    return "—" if value is None else f"{value:.1f}"


def rate_text(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
