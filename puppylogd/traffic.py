"""A seeded generator of realistic Common/Combined Log Format traffic.

20 sections, mixed methods and statuses, authenticated and anonymous users, IPv4 and IPv6
clients (a heavy head and a long tail), Common and Combined shapes, and a few per cent of
malformed lines (``MALFORMED_SHARE``) that the parser rejects.

* :class:`TrafficGenerator` ``.line(ts)`` -> ``(bytes, valid)``: one line at epoch second ts.
* :func:`lines` ``(rate, seconds, start_ts, seed)``: the lines of ``seconds`` seconds at
  ``rate`` lines/s, timestamps from ``start_ts``; deterministic for a seed (benchmarks, tests).
* :func:`schedule_lines` ``(phases, start_ts, seed)``: the same over phases (quiet/busy/burst).
* :func:`write_live` ``(path, phases, ...)``: append lines to a file in real time, stamped with
  the current second, following the phases (the demo).
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = [
    "DEMO_PHASES",
    "MALFORMED_SHARE",
    "SECTIONS",
    "Phase",
    "TrafficGenerator",
    "clf_time",
    "lines",
    "schedule_lines",
    "write_live",
]

SECTIONS = (
    "/",
    "/api",
    "/pages",
    "/report",
    "/static",
    "/images",
    "/login",
    "/logout",
    "/search",
    "/cart",
    "/checkout",
    "/account",
    "/admin",
    "/blog",
    "/docs",
    "/help",
    "/news",
    "/products",
    "/users",
    "/feed",
)
_SECTION_WEIGHTS = (8, 14, 12, 6, 10, 9, 4, 2, 6, 4, 2, 3, 1, 5, 4, 2, 3, 6, 2, 3)
_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH")
_METHOD_WEIGHTS = (80, 12, 3, 2, 2, 1)
_STATUSES = (200, 304, 301, 302, 201, 204, 404, 401, 403, 500, 502, 503, 499)
_STATUS_WEIGHTS = (66, 8, 3, 3, 3, 2, 8, 2, 1, 2, 1, 1, 1)
_USERS = ("james", "mary", "frank", "lin", "amira", "olga", "kenji", "sofia", "raj", "ana")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
_REFERERS = ("-", "https://www.example.com/", "https://search.example.org/?q=puppies")
_TAILS = ("", "/", "/list", "/create", "/42", "/item/7/edit", "?page=2", "/a?q=x", "/x.css")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MALFORMED_SHARE = 0.03


def clf_time(t: float) -> str:
    """Return the CLF timestamp (UTC, ``+0000``) of epoch second ``t``."""
    d = time.gmtime(int(t))
    return (
        f"{d.tm_mday:02d}/{_MONTHS[d.tm_mon - 1]}/{d.tm_year}:"
        f"{d.tm_hour:02d}:{d.tm_min:02d}:{d.tm_sec:02d} +0000"
    )


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of traffic: ``seconds`` long (``math.inf`` for ever) at ``rate`` lines/s."""

    name: str
    seconds: float
    rate: float


# The demo: a quiet start, a burst that lifts the 2-minute average over 10 req/s (30 req/s for
# 60 s gives an average of about 17 at the burst's end), then quiet traffic until the average
# falls back under the threshold (about 100 s after the burst) and for ever after.
DEMO_PHASES: tuple[Phase, ...] = (
    Phase("quiet", 20, 4.0),
    Phase("burst", 60, 30.0),
    Phase("quiet", math.inf, 4.0),
)


class TrafficGenerator:
    """Deterministic line maker: the same seed gives the same lines."""

    def __init__(self, seed: int = 0, malformed_share: float = MALFORMED_SHARE) -> None:
        self.rng = random.Random(seed)
        self.malformed_share = malformed_share
        self.clients = self._clients(2000)

    def _clients(self, n: int) -> list[str]:
        rng = self.rng
        out = []
        for _ in range(n):
            if rng.random() < 0.2:
                out.append(
                    f"2001:db8:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}"
                    f"::{rng.randrange(1, 0x10000):x}"
                )
            else:
                out.append(".".join(str(rng.randrange(1, 255)) for _ in range(4)))
        return out

    def _host(self) -> str:
        # A heavy head (crawlers, proxies) and a long tail, as real logs have.
        if self.rng.random() < 0.3:
            return self.rng.choice(self.clients)
        return self.clients[min(len(self.clients) - 1, int(self.rng.paretovariate(0.9)) - 1)]

    def _malformed(self, stamp: str) -> bytes:
        kind = self.rng.randrange(5)
        if kind == 0:
            return b"garbage line without any structure\n"
        if kind == 1:
            return f'10.0.0.1 - - [{stamp}] "GET /x HTTP/1.1" 2000 12\n'.encode()  # bad status
        if kind == 2:
            return f'10.0.0.1 - - [{stamp}] "" 400 0\n'.encode()  # empty request
        if kind == 3:
            return b'10.0.0.1 - - [31/Feb/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1\n'
        return f'10.0.0.1 - - [{stamp}] "GET /x HTTP/1.1\n'.encode()  # truncated

    def line(self, ts: float) -> tuple[bytes, bool]:
        """Return one line (with ``\\n``) at epoch second ``ts`` and whether it is valid."""
        rng = self.rng
        stamp = clf_time(ts)
        if rng.random() < self.malformed_share:
            return self._malformed(stamp), False
        section = rng.choices(SECTIONS, _SECTION_WEIGHTS)[0]
        path = "/" if section == "/" else section + rng.choice(_TAILS)
        method = rng.choices(_METHODS, _METHOD_WEIGHTS)[0]
        status = rng.choices(_STATUSES, _STATUS_WEIGHTS)[0]
        user = rng.choice(_USERS) if rng.random() < 0.25 else "-"
        size = "-" if status in (204, 304) else str(int(rng.lognormvariate(8, 1.2)))
        head = f'{self._host()} - {user} [{stamp}] "{method} {path} HTTP/1.1" {status} {size}'
        if rng.random() < 0.6:
            head += f' "{rng.choice(_REFERERS)}" "{rng.choice(_AGENTS)}"'
        return (head + "\n").encode(), True

    def second(self, ts: float, count: int) -> list[tuple[bytes, bool]]:
        """Return ``count`` lines all stamped with second ``ts``."""
        return [self.line(ts) for _ in range(count)]


def _per_second(rate: float, carry: float) -> tuple[int, float]:
    total = rate + carry
    n = int(total)
    return n, total - n


def _epoch(start_ts: float | datetime) -> float:
    return start_ts.timestamp() if isinstance(start_ts, datetime) else float(start_ts)


def lines(
    rate: float,
    seconds: int,
    start_ts: float | datetime,
    seed: int = 0,
    *,
    malformed_share: float = MALFORMED_SHARE,
) -> Iterator[bytes]:
    """Yield the lines of ``seconds`` seconds at ``rate`` lines/s from ``start_ts``."""
    yield from schedule_lines(
        [Phase("steady", seconds, rate)], start_ts, seed, malformed_share=malformed_share
    )


def schedule_lines(
    phases: Sequence[Phase],
    start_ts: float | datetime,
    seed: int = 0,
    *,
    malformed_share: float = MALFORMED_SHARE,
) -> Iterator[bytes]:
    """Yield the lines of consecutive ``phases`` (finite ones) from ``start_ts``."""
    gen = TrafficGenerator(seed, malformed_share)
    t = int(_epoch(start_ts))
    carry = 0.0
    for phase in phases:
        if math.isinf(phase.seconds):
            raise ValueError("schedule_lines needs finite phases")
        for _ in range(int(phase.seconds)):
            n, carry = _per_second(phase.rate, carry)
            for line, _valid in gen.second(t, n):
                yield line
            t += 1


def write_live(
    path: Path,
    phases: Sequence[Phase] = DEMO_PHASES,
    *,
    seed: int | None = None,
    stop: threading.Event | None = None,
    ticks_per_second: int = 5,
) -> int:
    """Append lines to ``path`` in real time following ``phases``; return the lines written.

    Each second's lines carry that second's timestamp and are spread over
    ``ticks_per_second`` writes. Stops when ``stop`` is set or the phases end.
    """
    gen = TrafficGenerator(int(time.time()) if seed is None else seed)
    stop = stop or threading.Event()
    written = 0
    carry = 0.0
    start = time.time()
    boundaries: list[tuple[float, Phase]] = []
    acc = 0.0
    for phase in phases:
        acc += phase.seconds
        boundaries.append((acc, phase))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        second = int(start)
        while not stop.is_set():
            elapsed = second - int(start)
            current = next((p for end, p in boundaries if elapsed < end), None)
            if current is None:
                break
            n, carry = _per_second(current.rate, carry)
            batch = gen.second(second, n)
            for k in range(ticks_per_second):
                part = batch[k * n // ticks_per_second : (k + 1) * n // ticks_per_second]
                if part:
                    os.write(fd, b"".join(line for line, _ in part))
                    written += len(part)
                wake = second + (k + 1) / ticks_per_second
                if stop.wait(max(wake - time.time(), 0.0)):
                    return written
            second += 1
    finally:
        os.close(fd)
    return written
