"""Settings for puppylogd and puppylog-watch: environment (PUPPYLOG_*), then CLI flags."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

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


class Settings(BaseSettings):
    """Every knob of puppylogd; each field is also ``PUPPYLOG_<NAME>`` and a CLI flag."""

    model_config = SettingsConfigDict(env_prefix="PUPPYLOG_", extra="ignore")

    # PostgreSQL DSN; unset means "run and use the embedded database".
    dsn: str | None = None
    # File holding the DSN (keeps passwords out of the environment and the command line).
    dsn_file: Path | None = None
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
    threshold: float = Field(default=10.0, ge=0)
    # Recover only below this average (hysteresis); unset means the threshold itself.
    recovery_threshold: float | None = Field(default=None, ge=0)
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
    poll_interval: float = Field(default=0.1, gt=0, le=60)
    # Lines longer than this many bytes are rejected (and skipped without losing sync).
    max_line_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    # Days of records kept; older partitions are dropped. 0 keeps everything.
    retention_days: int = Field(default=7, ge=0, le=36500)
    # Directory for the embedded database and local state.
    state_dir: Path = Field(default_factory=default_state_dir)
    # Log level of the daemon's own logs.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Log rendering: pretty on a terminal, JSON lines otherwise (auto), or forced.
    log_format: Literal["auto", "pretty", "json"] = "auto"

    @field_validator("log_files", mode="before")
    @classmethod
    def _split_files(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("log_files")
    @classmethod
    def _need_files(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("at least one log file is needed")
        resolved = [Path(os.path.abspath(p)) for p in value]
        if len(set(resolved)) != len(resolved):
            raise ValueError("a log file is listed twice")
        return resolved

    @model_validator(mode="after")
    def _check_recovery(self) -> Settings:
        if self.recovery_threshold is not None and self.recovery_threshold > self.threshold:
            raise ValueError("recovery_threshold must not exceed threshold")
        return self

    def resolved_dsn(self) -> str | None:
        """Return the DSN from ``dsn`` or ``dsn_file``; None means the embedded database."""
        if self.dsn:
            return self.dsn
        if self.dsn_file is not None:
            return self.dsn_file.read_text(encoding="utf-8").strip()
        return None


def describe_error(exc: ValidationError) -> str:
    """Turn a settings validation error into one line naming the setting, flag and variable."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"] if isinstance(p, str)) or "settings"
        flag = "--" + name.replace("_", "-")
        env = "PUPPYLOG_" + name.upper()
        parts.append(f"invalid setting {name} ({flag} / {env}): {err['msg']}")
    return "; ".join(parts)
