"""Settings for puppylogd and puppylog-watch: environment (PUPPYLOG_*), then CLI flags."""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_LOG_FILE = Path("/tmp/access.log")

# Logged when --dsn on the command line carries a password: any local user can read a
# process's arguments (ps, /proc/PID/cmdline).
PASSWORD_ON_COMMAND_LINE = (
    "the --dsn on the command line contains a password, which any local user can read "
    "(ps, /proc); use PUPPYLOG_DSN, --dsn-file or ~/.pgpass (PGPASSFILE) instead"
)
# user:secret@ in a URI, or a password key (conninfo "password=", URI "?password=").
_DSN_PASSWORD = re.compile(r"://[^/?#@\s]*:[^/?#\s]*@|(?:^|[\s?&])password\s*=", re.IGNORECASE)


def dsn_has_password(dsn: str) -> bool:
    """Return whether a DSN (URI or key/value conninfo) spells out a password."""
    return _DSN_PASSWORD.search(dsn) is not None


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def check_dsn(dsn: str) -> str:
    """Return ``dsn`` if asyncpg can use it; raise ValueError saying what is wrong otherwise.

    asyncpg would raise the same errors on every connection attempt, which a daemon that
    waits for its database would retry forever. The DSN is not echoed (it may hold a password).
    """
    if not dsn.strip():
        raise ValueError("the DSN is empty")
    if "://" not in dsn:
        if "=" in dsn:
            raise ValueError(
                "key=value connection strings are not supported: use a URI, "
                "postgresql://user@host:port/dbname"
            )
        raise ValueError("not a URI: expected postgresql://user@host:port/dbname")
    try:
        parts = urlsplit(dsn)
    except ValueError as exc:
        raise ValueError(f"not a valid URI ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"the scheme must be postgresql:// or postgres://, not {parts.scheme}://")
    ports = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        tail = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" in tail:
            ports.append(tail.rpartition(":")[2])
    query = parse_qs(parts.query)
    ports += query.get("port", [])
    for port in ports:
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"the port must be a number from 1 to 65535, not {port!r}")
    for mode in query.get("sslmode", []):
        if mode not in _SSLMODES:
            raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}, not {mode!r}")
    return dsn


def unknown_settings(names: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """Return a warning for each ``PUPPYLOG_*`` name that is no setting (a likely typo)."""
    valid = {"PUPPYLOG_" + f.upper() for f in Settings.model_fields} | set(known)
    warnings = []
    for name in sorted(set(names)):
        if name.startswith("PUPPYLOG_") and name not in valid:
            # Compared without the prefix every name shares, which would make all look close.
            tails = {v.removeprefix("PUPPYLOG_"): v for v in valid}
            close = difflib.get_close_matches(name.removeprefix("PUPPYLOG_"), tails, n=1)
            hint = f" (did you mean {tails[close[0]]}?)" if close else ""
            warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def default_state_dir() -> Path:
    """Return where the embedded database and local state live.

    systemd's ``$STATE_DIRECTORY`` wins; root uses /var/lib/puppylog (its home is not
    traversable by the unprivileged user that runs the embedded server); everyone else
    ``$XDG_STATE_HOME/puppylog``.
    """
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/puppylog")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "puppylog"


class ConnectionSettings(BaseSettings):
    """Where the database is: all that puppylog-watch reads of the daemon's settings."""

    model_config = SettingsConfigDict(env_prefix="PUPPYLOG_", extra="ignore")

    # PostgreSQL DSN; unset means "run and use the embedded database".
    dsn: str | None = None
    # File holding the DSN (keeps passwords out of the environment and the command line).
    dsn_file: Path | None = None
    # Directory for the embedded database and local state.
    state_dir: Path = Field(default_factory=default_state_dir)

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str | None) -> str | None:
        return check_dsn(value) if value else value

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_given(cls, value: object) -> object:
        if isinstance(value, str | Path) and not str(value).strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir_absolute(cls, value: Path) -> Path:
        # Relative to the directory of the start: later chdirs must not move the database.
        return Path(os.path.abspath(value))

    def dsn_source(self) -> str:
        """Return where the DSN comes from, for an error that says what to check."""
        if self.dsn:
            return "--dsn / PUPPYLOG_DSN"
        if self.dsn_file is not None:
            return f"the DSN file {self.dsn_file}, --dsn-file / PUPPYLOG_DSN_FILE"
        return f"the embedded database under {self.state_dir}"

    def resolved_dsn(self) -> str | None:
        """Return the DSN from ``dsn`` or ``dsn_file``; None means the embedded database."""
        if self.dsn:
            return self.dsn
        if self.dsn_file is not None:
            dsn = self.dsn_file.read_text(encoding="utf-8").strip()
            try:
                return check_dsn(dsn)
            except ValueError as exc:
                raise ValueError(f"the DSN in {self.dsn_file}: {exc}") from None
        return None


class Settings(ConnectionSettings):
    """Every knob of puppylogd; each field is also ``PUPPYLOG_<NAME>`` and a CLI flag."""

    # Access logs to tail (env: comma-separated); each is one stream.
    log_files: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [DEFAULT_LOG_FILE])
    # Log group (site or service) the streams feed; alerts are on a group's total traffic.
    group: str = Field(default="default", min_length=1, max_length=200)
    # Host name recorded on this daemon's streams.
    host: str = Field(default_factory=socket.gethostname, min_length=1, max_length=255)
    # Ingest what the files hold now, commit, close time at the last timestamp, and exit.
    once: bool = False
    # On a stream's first start, skip what the file already holds and read only new lines.
    from_end: bool = False
    # High-traffic alert threshold, average requests per second over the window.
    threshold: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    # Recover only below this average (hysteresis); unset means the threshold itself.
    recovery_threshold: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    # Alert window in seconds (average hits/s over this many seconds).
    window_seconds: int = Field(default=120, ge=1, le=86400)
    # Out-of-order allowance: a second closes this long after the newest line passed it.
    lateness_seconds: int = Field(default=2, ge=0, le=3600)
    # A stream whose daemon has not heart-beaten for this long stops holding time back.
    heartbeat_timeout_seconds: int = Field(default=30, ge=2, le=86400)
    # Most lines in one ingest transaction.
    batch_lines: int = Field(default=20000, ge=1, le=1_000_000)
    # Longest a line waits in memory before its batch is committed, in milliseconds.
    batch_ms: int = Field(default=100, ge=1, le=60000)
    # How often an idle file is checked for new data, rotation or truncation, in seconds.
    poll_interval: float = Field(default=0.1, gt=0, le=60, allow_inf_nan=False)
    # Lines longer than this many bytes are rejected (and skipped without losing sync).
    max_line_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    # Days of records kept; older partitions are dropped. 0 keeps everything.
    retention_days: int = Field(default=7, ge=0, le=36500)
    # Log level of the daemon's own logs.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Log rendering: pretty on a terminal, JSON lines otherwise (auto), or forced.
    log_format: Literal["auto", "pretty", "json"] = "auto"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_files", mode="before")
    @classmethod
    def _split_files(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list) and any(isinstance(p, str) and not p.strip() for p in value):
            # Path("") is ".": --log-file "" would follow the current directory.
            raise ValueError("a log file path must not be empty")
        return value

    @field_validator("log_files")
    @classmethod
    def _need_files(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("at least one log file is needed")
        resolved = [Path(os.path.abspath(p)) for p in value]
        seen: dict[str, Path] = {}
        for path in resolved:
            # Through a symlink too: the same lines must not be stored twice.
            real = os.path.realpath(path)
            if real in seen:
                same = "" if seen[real] == path else f" ({seen[real]} and {path} are one file)"
                raise ValueError(f"a log file is listed twice{same}")
            seen[real] = path
        return resolved

    @model_validator(mode="after")
    def _check_recovery(self) -> Settings:
        if self.recovery_threshold is not None and self.recovery_threshold > self.threshold:
            raise ValueError(
                f"recovery_threshold ({self.recovery_threshold:g}; --recovery-threshold / "
                f"PUPPYLOG_RECOVERY_THRESHOLD) must not exceed threshold ({self.threshold:g})"
            )
        return self


def describe_error(exc: ValidationError) -> str:
    """Turn a settings validation error into one line naming the setting, flag and variable."""
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        name = ".".join(str(p) for p in err["loc"] if isinstance(p, str))
        if not name:  # a rule across settings: its message names them
            parts.append(f"invalid settings: {msg}")
            continue
        flag = "--log-file" if name == "log_files" else "--" + name.replace("_", "-")
        env = "PUPPYLOG_" + name.upper()
        parts.append(f"invalid setting {name} ({flag} / {env}): {msg}")
    return "; ".join(parts)
