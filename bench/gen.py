"""Seeded generator of realistic Common/Combined Log Format traffic for the benchmarks.

Lines come from a pool built once from a seed: 20 sections, mixed methods and statuses,
authenticated and anonymous users, IPv4 and IPv6 clients, Common and Combined shapes, about
2 % malformed lines. Each pool entry is split around its timestamp, so writing a line costs
one string concatenation: ``prefix + timestamp + suffix``.

``write_bulk`` writes a file of N lines whose timestamps alternate busy and quiet phases and
end a minute before now (so retention accepts them). ``LiveWriter`` (run as
``python bench/gen.py live PATH RATE SECONDS OUT.json``) appends lines stamped with the
current second at a steady rate and records, per second, when the last line carrying that
timestamp was written.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

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
METHODS = (("GET", 80), ("POST", 12), ("PUT", 3), ("DELETE", 2), ("HEAD", 2), ("PATCH", 1))
STATUSES = (
    (200, 70),
    (304, 8),
    (301, 3),
    (302, 3),
    (404, 8),
    (401, 2),
    (403, 1),
    (500, 2),
    (502, 1),
    (503, 1),
    (499, 1),
)
USERS = ("james", "mary", "frank", "lin", "amira", "olga", "kenji", "sofia")
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
MALFORMED_SHARE = 0.02
POOL_SIZE = 65536
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf_time(t: float) -> str:
    """Return the CLF timestamp text (UTC, ``+0000``) of epoch second ``t``."""
    d = datetime.fromtimestamp(int(t), UTC)
    return (
        f"{d.day:02d}/{MONTHS[d.month - 1]}/{d.year}:"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000"
    )


def _weighted(rng: random.Random, table: tuple[tuple[object, int], ...]) -> object:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def _clients(rng: random.Random, n: int = 5000) -> list[str]:
    """Return ``n`` client addresses, a fifth of them IPv6."""
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            a, b, c = rng.randrange(0x10000), rng.randrange(0x10000), rng.randrange(1, 0x10000)
            out.append(f"2001:db8:{a:x}:{b:x}::{c:x}")
        else:
            out.append(".".join(str(rng.randrange(1, 255)) for _ in range(4)))
    return out


def _host(rng: random.Random, clients: list[str]) -> str:
    """Pick a client: a heavy head (crawlers, proxies) and a long tail, as real logs have."""
    if rng.random() < 0.25:
        return rng.choice(clients)
    return clients[min(len(clients) - 1, int(rng.paretovariate(0.8)) - 1)]


def _path(rng: random.Random) -> str:
    section = rng.choice(SECTIONS)
    if section == "/":
        return "/"
    tail = rng.choice(("", "/", "/list", "/create", "/42", "/item/7/edit", "?page=2", "/a?q=x"))
    return section + tail


def _malformed(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        return "garbage line without structure ", ""
    if kind == 1:
        return "10.0.0.1 - - [", '] "GET /x HTTP/1.1" 2000 12'  # bad status
    if kind == 2:
        return "10.0.0.1 - - [", '] "" 400 0'  # empty request
    if kind == 3:
        return '10.0.0.1 - - [31/Feb/2026:10:00:00 +0000] "GET /?t=', '" 200 1'  # bad date
    return "10.0.0.1 - - [", '] "GET /x HTTP/1.1" 200'  # truncated


def make_pool(seed: int, size: int = POOL_SIZE) -> list[tuple[str, str]]:
    """Return ``size`` (prefix, suffix) pairs; a line is ``prefix + clf_time + suffix``."""
    rng = random.Random(seed)
    clients = _clients(rng)
    rng.shuffle(clients)
    pool: list[tuple[str, str]] = []
    for _ in range(size):
        if rng.random() < MALFORMED_SHARE:
            pool.append(_malformed(rng))
            continue
        user = rng.choice(USERS) if rng.random() < 0.3 else "-"
        method = _weighted(rng, METHODS)
        status = _weighted(rng, STATUSES)
        size_text = "-" if status in (304, 204) else str(rng.randrange(0, 200_000))
        prefix = f"{_host(rng, clients)} - {user} ["
        suffix = f'] "{method} {_path(rng)} HTTP/1.1" {status} {size_text}'
        if rng.random() < 0.7:
            referer = rng.choice(("-", "https://example.com/", "https://www.google.com/"))
            suffix += f' "{referer}" "{rng.choice(AGENTS)}"'
        pool.append((prefix, suffix))
    return pool


def write_bulk(path: Path, lines: int, seed: int, end: float | None = None) -> dict[str, int]:
    """Write ``lines`` lines: 5-minute phases alternating busy (250/s) and quiet (30/s).

    Timestamps increase and end at ``end`` (default: a minute ago). Returns counts.
    """
    rng = random.Random(seed + 1)
    pool = make_pool(seed)
    n_pool = len(pool)
    # Lines per second, phase by phase, walked backwards from the end.
    per_second: list[int] = []
    total = 0
    phase = 0
    while total < lines:
        rate = 250 if phase % 2 == 0 else 30
        for _ in range(300):
            n = max(0, min(lines - total, int(rng.gauss(rate, rate * 0.2))))
            per_second.append(n)
            total += n
            if total >= lines:
                break
        phase += 1
    per_second.reverse()
    stop = int(end if end is not None else time.time() - 60)
    first = stop - len(per_second) + 1
    with path.open("w", encoding="utf-8") as out:
        i = rng.randrange(n_pool)
        for k, n in enumerate(per_second):
            ts = clf_time(first + k)
            buf = []
            for _ in range(n):
                prefix, suffix = pool[i]
                i = (i + 1) % n_pool
                buf.append(prefix + ts + suffix + "\n")
            out.write("".join(buf))
    return {"lines": lines, "seconds": len(per_second), "first_ts": first, "last_ts": stop}


def live(path: Path, rate: float, seconds: float, out_json: Path, seed: int = 7) -> None:
    """Append ``rate`` lines/s for ``seconds``, stamped with the current second.

    Writes every 5 ms what is due; records per epoch second the wall time right after the
    write(2) that carried the last line stamped with that second.
    """
    pool = make_pool(seed)
    n_pool = len(pool)
    i = 0
    last_write: dict[int, float] = {}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = 0
    start = time.time()
    try:
        while True:
            now = time.time()
            elapsed = now - start
            if elapsed >= seconds:
                break
            due = int(rate * elapsed) - written
            if due > 0:
                sec = int(now)
                ts = clf_time(sec)
                parts = []
                for _ in range(due):
                    prefix, suffix = pool[i]
                    i = i + 1 if i + 1 < n_pool else 0
                    parts.append(prefix + ts + suffix + "\n")
                os.write(fd, "".join(parts).encode())
                written += due
                last_write[sec] = time.time()
            time.sleep(0.005)
    finally:
        os.close(fd)
    out_json.write_text(
        json.dumps({"written": written, "start": start, "last_write": last_write}),
        encoding="utf-8",
    )


def main(argv: list[str]) -> int:
    """``gen.py bulk PATH LINES [SEED]`` or ``gen.py live PATH RATE SECONDS OUT.json``."""
    if len(argv) >= 3 and argv[0] == "bulk":
        seed = int(argv[3]) if len(argv) > 3 else 42
        print(json.dumps(write_bulk(Path(argv[1]), int(argv[2]), seed)))
        return 0
    if len(argv) == 5 and argv[0] == "live":
        live(Path(argv[1]), float(argv[2]), float(argv[3]), Path(argv[4]))
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
