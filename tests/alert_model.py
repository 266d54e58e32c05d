"""A pure-Python reference model of the high-traffic alert rule (README, "The alert").

For a closed second ``t``, ``hits(t)`` is the number of records with timestamp in
``[t - window + 1, t]`` and ``avg(t) = hits(t) / window``. While OK, the first closed second
with ``avg > threshold`` fires; while firing, the first closed second with ``avg < recovery``
(the threshold unless a recovery threshold is set) recovers. Equal changes nothing.

Seconds are plain integers (e.g. epoch seconds). The model is deliberately naive: it walks
every second, so its agreement with the database's clever evaluation means something.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["alert", "recovery"]


@dataclass(frozen=True, slots=True)
class Transition:
    """One alert or recovery at closed second ``t`` with the window's ``hits`` then."""

    kind: Kind
    t: int
    hits: int


@dataclass(slots=True)
class ModelState:
    """What survives a restart: the last closed second and whether the alert is firing."""

    closed_through: int | None = None
    firing: bool = False


@dataclass(slots=True)
class AlertModel:
    """The alert rule, evaluated second by second as seconds close."""

    window: int = 120
    threshold: float = 10.0
    recovery_threshold: float | None = None
    state: ModelState = field(default_factory=ModelState)

    @property
    def recovery(self) -> float:
        """The average below which a firing alert recovers."""
        return self.threshold if self.recovery_threshold is None else self.recovery_threshold

    def window_hits(self, hits: Mapping[int, int], t: int) -> int:
        """Records with timestamp in ``[t - window + 1, t]``."""
        return sum(hits.get(s, 0) for s in range(t - self.window + 1, t + 1))

    def close_through(self, hits: Mapping[int, int], through: int) -> list[Transition]:
        """Close every second up to ``through`` (inclusive); return the transitions, in order.

        The first evaluation starts at the first second with traffic (earlier seconds have an
        empty window and cannot change an OK state).
        """
        start = self.state.closed_through
        if start is None:
            seen = [s for s, n in hits.items() if n > 0 and s <= through]
            if not seen:
                return []
            start = min(seen) - 1
        out: list[Transition] = []
        for t in range(start + 1, through + 1):
            n = self.window_hits(hits, t)
            avg = n / self.window
            if not self.state.firing and avg > self.threshold:
                self.state.firing = True
                out.append(Transition("alert", t, n))
            elif self.state.firing and avg < self.recovery:
                self.state.firing = False
                out.append(Transition("recovery", t, n))
        self.state.closed_through = max(start, through)
        return out


def evaluate(
    hits: Mapping[int, int],
    through: int,
    *,
    window: int = 120,
    threshold: float = 10.0,
    recovery_threshold: float | None = None,
) -> list[Transition]:
    """Return the transitions of the closed seconds up to ``through`` in one pass."""
    model = AlertModel(window, threshold, recovery_threshold)
    return model.close_through(hits, through)


def intervals(transitions: list[Transition]) -> list[tuple[int, int, int | None, int | None]]:
    """Pair transitions into ``(triggered_at, hits, recovered_at, hits_at_recovery)`` rows."""
    rows: list[tuple[int, int, int | None, int | None]] = []
    for tr in transitions:
        if tr.kind == "alert":
            rows.append((tr.t, tr.hits, None, None))
        else:
            t0, h0, _, _ = rows[-1]
            rows[-1] = (t0, h0, tr.t, tr.hits)
    return rows


def per_second(timestamps: list[int]) -> dict[int, int]:
    """Count records per second from a list of (possibly out-of-order) timestamps."""
    counts: dict[int, int] = {}
    for ts in timestamps:
        counts[ts] = counts.get(ts, 0) + 1
    return counts
