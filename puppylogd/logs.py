"""Configure structlog and stdlib logging; mask secrets; rate-limit noisy reports.

Output is one event per line. On a terminal it is pretty (``ConsoleRenderer``); otherwise JSON
objects with the stable keys ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and ``event``
first, then the event's fields; a traceback goes into the ``exception`` string of the same line.

When the output stream is connected to journald (``$JOURNAL_STREAM`` names its device and
inode), each line starts with a ``<N>`` syslog priority prefix, which journald strips and
stores as the entry's priority (``SyslogLevelPrefix=yes``, the default), so that
``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "RateLimitedReporter",
    "configure_logging",
    "get_logger",
    "mask_dsn",
    "mask_secrets",
]

LogFormat = Literal["auto", "pretty", "json"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog(3) priorities, as understood by journald's "<N>" line prefix.
_SYSLOG_PRIORITY = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}

_MASK = "***"

# scheme://user:password@host — the password ends at the last "@" of the token; over-masking
# a malformed URI beats leaking a password that contains a raw "@".
_URI_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s'\"]*:)(?P<secret>[^\s'\"]+)(?=@)"
)
# libpq key/value conninfo (password=secret, password = 'a b\'c'), URI query parameters
# (?password=secret&...) and environment-style PGPASSWORD=secret / db_password=secret.
_KV_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9])(?:pg)?(?:password|passwd|pwd)\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s&;'\"]+)",
    re.IGNORECASE,
)
# Fields whose whole value is a secret, whatever it looks like.
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "pgpassword"})


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` (or any text containing DSNs) with passwords replaced by ``***``.

    Handles URIs (``postgresql://user:secret@host/db``) and key/value conninfo strings
    (``host=h password=secret``), including ``password=`` query parameters of a URI.
    """
    if "://" not in dsn and "=" not in dsn:
        return dsn  # fast path: most log values contain neither
    masked = _URI_PASSWORD.sub(lambda m: m["head"] + _MASK, dsn)
    return _KV_PASSWORD.sub(lambda m: m["head"] + _MASK, masked)


def _mask_value(value: object, depth: int = 0) -> object:
    if isinstance(value, str):
        return mask_dsn(value)
    if isinstance(value, BaseException):
        # Rendered via repr() otherwise, which would bypass masking (asyncpg and libpq
        # errors can quote the connection string).
        return mask_dsn(f"{type(value).__name__}: {value}")
    if depth >= 4:  # enough for structured fields; bounds work on odd recursive values
        return value
    if isinstance(value, Mapping):
        return {
            k: (_MASK if _is_secret_key(k) else _mask_value(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_value(v, depth + 1) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _SECRET_KEYS


def mask_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask DSN passwords in every string value (and whole ``password``-like fields)."""
    for key, value in event_dict.items():
        if key.startswith("_"):
            continue  # structlog's private record/meta entries
        event_dict[key] = _MASK if _is_secret_key(key) else _mask_value(value)
    return event_dict


def _stable_keys(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put ``timestamp``, ``level``, ``logger`` and ``event`` first, always present."""
    head = {
        "timestamp": event_dict.pop("timestamp", None),
        "level": event_dict.pop("level", _method),
        "logger": event_dict.pop("logger", None) or "puppylogd",
        "event": event_dict.pop("event", ""),
    }
    if not isinstance(head["event"], str):
        head["event"] = str(head["event"])
    head.update(event_dict)
    return head


def _is_journal_stream(stream: TextIO) -> bool:
    """Return whether ``stream`` is the journald connection named by ``$JOURNAL_STREAM``."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        # No real file descriptor (StringIO, pytest capture) or a malformed variable.
        return False


@dataclass(frozen=True)
class _Render:
    """Render an event dict to one line, optionally with a journald ``<N>`` prefix."""

    renderer: Callable[[WrappedLogger, str, EventDict], str | bytes]
    syslog_prefix: bool

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method))
        line = self.renderer(logger, method, event_dict)
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if self.syslog_prefix:
            return f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"
        return line


_HANDLER_MARK = "_puppylog_handler"


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging (asyncpg etc.) to ``stream`` in one format.

    ``stream`` defaults to ``sys.stderr`` (under systemd it goes to the journal like stdout,
    and keeps stdout free for command output). ``fmt="auto"`` renders pretty on a terminal
    and JSON lines otherwise. Calling it again replaces the previous configuration.
    """
    try:
        numeric_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None
    if fmt not in ("auto", "pretty", "json"):
        raise ValueError(f"unknown log format {fmt!r}; use auto, pretty or json")
    out = stream if stream is not None else sys.stderr
    is_tty = _isatty(out)
    pretty = fmt == "pretty" or (fmt == "auto" and is_tty)

    # Run for both structlog events and foreign (stdlib) records before rendering.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Callable[[WrappedLogger, str, EventDict], str | bytes]
    if pretty:
        renderer = structlog.dev.ConsoleRenderer(colors=is_tty)
    else:
        renderer = structlog.processors.JSONRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become a plain string *before* masking, so a DSN in an exception
            # message is masked too; JSON keeps it on the same line.
            structlog.processors.format_exc_info,
            mask_secrets,
            _stable_keys,
            _Render(renderer, syslog_prefix=_is_journal_stream(out)),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # No caching: module-level loggers created before configure_logging() must pick up
        # the configuration (and tests reconfigure); the daemon does not log per line.
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger named ``name`` (the ``logger`` key of its events)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0
    log: Any = None
    event: str = ""


class RateLimitedReporter:
    """Log at most ``limit`` events per ``interval`` seconds per key; count the rest.

    Suppressed events are summarised as one ``summary_event`` line (with ``suppressed=N``)
    when the key's interval rolls over, from :meth:`tick` once the interval has passed, or
    from :meth:`flush`. Windows are fixed: each starts at the first report after the
    previous one ended. ``clock`` is injectable for tests (monotonic seconds).
    """

    def __init__(
        self,
        limit: int = 5,
        interval: float = 10.0,
        *,
        level: str = "warning",
        summary_event: str = "rejected lines suppressed",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Set the budget (``limit`` per ``interval`` seconds) and the log level used."""
        if limit < 0 or interval <= 0:
            raise ValueError("limit must be >= 0 and interval > 0")
        self.limit = limit
        self.interval = interval
        self.level = level
        self.summary_event = summary_event
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def report(
        self,
        log: Any,
        event: str,
        /,
        *,
        rate_key: Hashable | None = None,
        **fields: Any,
    ) -> bool:
        """Log ``event`` with ``fields`` on ``log`` unless over budget; return whether logged.

        ``rate_key`` selects the budget (default: ``event``), e.g. one per tailed file.
        """
        key = event if rate_key is None else rate_key
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.interval:
            self._summarise(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(start=now)
        window.log = log
        window.event = event
        if window.logged >= self.limit:
            window.suppressed += 1
            return False
        window.logged += 1
        getattr(log, self.level)(event, **fields)
        return True

    @property
    def suppressed(self) -> int:
        """Return how many events are suppressed and not yet summarised (all keys)."""
        return sum(w.suppressed for w in self._windows.values())

    def tick(self) -> None:
        """Summarise and close windows whose interval has passed; call periodically."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                self._summarise(key, window)
                del self._windows[key]

    def flush(self) -> None:
        """Summarise every pending suppressed count now and start afresh (e.g. at exit)."""
        for key, window in list(self._windows.items()):
            self._summarise(key, window)
        self._windows.clear()

    def _summarise(self, key: Hashable, window: _Window) -> None:
        if window.suppressed and window.log is not None:
            fields: dict[str, Any] = {
                "suppressed": window.suppressed,
                "suppressed_event": window.event,
                "interval_s": self.interval,
            }
            if key != window.event:
                fields["rate_key"] = str(key)
            getattr(window.log, self.level)(self.summary_event, **fields)
        window.suppressed = 0
