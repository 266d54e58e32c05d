"""What the watch knows: recent buckets, streams, the active alert and the alert events."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from puppylog_watch.models import AlertPayload, RecoveryPayload, StatsPayload

__all__ = ["AlertEvent", "StreamInfo", "WatchState", "news_order"]

AlertEvent = AlertPayload | RecoveryPayload


def news_order(p: StatsPayload | AlertEvent) -> tuple[datetime, int]:
    """Return the sort key that puts buckets and alerts in the order they happened.

    A bucket is news when its last second closes, an alert or recovery when its own second
    does; on a tie the alert comes first. That is the order a daemon that keeps up announces
    them in, one second at a time, so a catch-up reads like the live feed it replaces.
    """
    if isinstance(p, StatsPayload):
        return p.bucket + timedelta(seconds=p.seconds), 1
    return p.at + timedelta(seconds=1), 0


MAX_BUCKETS = 360  # one hour of 10-second buckets
MAX_EVENTS = 200


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One log stream of the group, as last read from ``puppylog.log_streams``."""

    host: str
    path: str
    lag_bytes: int | None
    heartbeat_at: datetime | None
    stopped: bool
    caught_up: bool
    # Rows stored after the group closed their second (in no alert and no published bucket).
    lines_late: int = 0
    # Its host's clock minus the database's, in seconds, as its daemon measured it; None:
    # unknown.
    clock_offset_s: float | None = None
    # When late rows were last counted (the database's time); None: never, or unknown.
    late_at: datetime | None = None


@dataclass
class WatchState:
    """The state the views render; mutated only by the listener, on the event loop."""

    group: str
    threshold: float | None = None
    window_s: int = 120
    heartbeat_timeout_s: int = 30
    # The database's clock minus this host's, as of the last read of the streams: heartbeat
    # times are the database's, and their age must not depend on this host's clock.
    clock_offset: timedelta = timedelta(0)
    group_exists: bool = True
    buckets: deque[StatsPayload] = field(default_factory=lambda: deque(maxlen=MAX_BUCKETS))
    streams: list[StreamInfo] = field(default_factory=list)
    active_alert: AlertPayload | None = None
    # Alert and recovery events, newest first.
    events: deque[AlertEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    seen: set[tuple[int, str]] = field(default_factory=set)
    connected: bool = False
    # Short enough for the live view's header; ``status_detail`` is the full story, if any.
    status: str = "connecting"
    status_detail: str = ""

    @property
    def latest(self) -> StatsPayload | None:
        """Return the newest bucket, if any."""
        return self.buckets[-1] if self.buckets else None

    def apply_stats(self, p: StatsPayload) -> bool:
        """Record a bucket; return False if it is not newer than the newest one known."""
        if p.group != self.group:
            return False
        self.threshold = p.threshold
        if self.buckets and p.bucket <= self.buckets[-1].bucket:
            if p.bucket == self.buckets[-1].bucket:
                self.buckets[-1] = p  # a re-published bucket replaces the old summary
            return False
        self.buckets.append(p)
        return True

    def apply_alert(self, p: AlertEvent) -> bool:
        """Record an alert or recovery; return False if it was already seen."""
        if p.group != self.group:
            return False
        key = (p.alert_id, p.type)
        if key in self.seen:
            return False
        self.seen.add(key)
        self.events.appendleft(p)
        if isinstance(p, AlertPayload):
            if (p.alert_id, "recovery") not in self.seen:
                self.active_alert = p
        elif self.active_alert is not None and self.active_alert.alert_id == p.alert_id:
            self.active_alert = None
        return True

    def heartbeat_silence(self, now: datetime) -> float | None:
        """Return for how many seconds no stream has heartbeaten, if longer than the timeout.

        ``now`` is this host's time; None while some stream heartbeats, or none ever did.
        """
        beats = [s.heartbeat_at for s in self.streams if s.heartbeat_at is not None]
        if not beats:
            return None
        silence = (now + self.clock_offset - max(beats)).total_seconds()
        return silence if silence > self.heartbeat_timeout_s else None

    def last_event_at(self) -> datetime | None:
        """Return the time of the newest alert event seen."""
        return max((e.at for e in self.events), default=None)
