"""Command line of ``puppylog-watch``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from puppylogd import __version__

# pydantic, rich and asyncpg are imported where needed: the imports take a good part of a
# second, and a Ctrl-C in that time must end the watch as quietly as one after (see main).

__all__ = ["build_parser", "main", "resolve_dsn"]


class WatchError(Exception):
    """A problem that ends the watch with one clear line (exit ``status``: 1, or 2 for a bad
    setting)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``puppylog-watch``."""
    p = argparse.ArgumentParser(
        prog="puppylog-watch",
        description="Show Puppylog's traffic stats and alerts live (LISTEN on the database).",
    )
    p.add_argument("--dsn", help="PostgreSQL DSN (env PUPPYLOG_DSN); default: embedded database")
    p.add_argument("--dsn-file", type=Path, help="file holding the DSN (env PUPPYLOG_DSN_FILE)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="the daemon's state directory, to find its embedded database (env PUPPYLOG_STATE_DIR)",
    )
    p.add_argument("--group", help="log group to show (env PUPPYLOG_GROUP; default 'default')")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--plain", action="store_true", help="one plain line per event")
    out.add_argument("--json", action="store_true", help="one JSON payload per line (NDJSON)")
    out.add_argument("--history", action="store_true", help="print past alerts and exit")
    p.add_argument("--since", help="with --history: only alerts since this ISO 8601 time")
    p.add_argument("--version", action="version", version=f"puppylog-watch {__version__}")
    return p


def resolve_dsn(dsn: str | None, dsn_file: Path | None, state_dir: Path | None) -> tuple[str, str]:
    """Return (dsn, source): the configured DSN, else the daemon's running embedded database.

    ``source`` says where the DSN comes from, for an error that says what to check.

    Only the connection settings are read: the daemon's others (a threshold, its files) are
    none of the watch's business, and a bad one must not stop it.
    """
    from puppylogd.config import ConnectionSettings

    overrides: dict[str, object] = {}
    if dsn:
        overrides["dsn"] = dsn
    if dsn_file is not None:
        overrides["dsn_file"] = dsn_file
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    from pydantic import ValidationError

    try:
        settings = ConnectionSettings(**overrides)  # type: ignore[arg-type]
        resolved = settings.resolved_dsn()
    except ValidationError as exc:
        from puppylogd.config import describe_error

        raise WatchError(describe_error(exc), status=2) from exc
    except OSError as exc:
        raise WatchError(f"invalid setting dsn_file: cannot read it: {exc}", status=2) from exc
    except ValueError as exc:
        raise WatchError(f"invalid setting dsn_file: {exc}", status=2) from exc
    if resolved:
        return resolved, settings.dsn_source()
    from puppylogd.embedded import Cluster, EmbeddedError

    try:
        cluster = Cluster(settings.state_dir)
    except EmbeddedError as exc:
        raise WatchError(str(exc)) from exc
    if not cluster.is_running():
        raise WatchError(
            f"no DSN configured and the embedded database under {settings.state_dir} is not "
            "running: start puppylogd (or `puppylogd demo`), or pass --dsn / set PUPPYLOG_DSN"
        )
    return cluster.dsn(), settings.dsn_source()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``puppylog-watch``; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        # Before the watch's own handler (during the imports): as after it, the watch's
        # normal end, or an interrupted --history.
        return 130 if args.history else 0


def _run(args: argparse.Namespace) -> int:
    group = args.group or os.environ.get("PUPPYLOG_GROUP") or "default"
    since = None
    if args.since is not None:
        if not args.history:
            print("puppylog-watch: error: --since needs --history", file=sys.stderr)
            return 2
        from puppylog_watch.listener import parse_since

        try:
            since = parse_since(args.since)
        except ValueError:
            print(
                f"puppylog-watch: error: --since: not an ISO 8601 time: {args.since}",
                file=sys.stderr,
            )
            return 2
    from puppylogd.cli import KNOWN_ENV
    from puppylogd.config import unknown_settings

    # A mistyped PUPPYLOG_DSN would otherwise read as "no DSN configured".
    for warning in unknown_settings(os.environ, known=KNOWN_ENV):
        print(f"puppylog-watch: warning: {warning}", file=sys.stderr)
    try:
        dsn, source = resolve_dsn(args.dsn, args.dsn_file, args.state_dir)
    except WatchError as exc:
        print(f"puppylog-watch: error: {exc}", file=sys.stderr)
        return exc.status
    from rich.console import Console

    from puppylog_watch.app import run_history, run_watch

    if args.history:
        return run_history(dsn, group, since, Console(), source)
    if args.json:
        mode = "json"
    elif args.plain or not sys.stdout.isatty():
        mode = "plain"
    else:
        mode = "live"
    try:
        return run_watch(dsn, group, mode=mode, source=source)
    except KeyboardInterrupt:
        return 0
