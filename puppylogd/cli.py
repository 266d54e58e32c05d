"""Command line of puppylogd: ``run`` (default), ``migrate`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from puppylogd import __version__
from puppylogd.config import (
    PASSWORD_ON_COMMAND_LINE,
    Settings,
    describe_error,
    dsn_has_password,
    unknown_settings,
)
from puppylogd.embedded import BINDIR_ENV, EmbeddedError
from puppylogd.launch import release_reloads
from puppylogd.logs import configure_logging, mask_dsn

# Flags spelt differently from their setting: a repeatable --log-file fills log_files.
_FLAG_NAMES = {"log_files": "--log-file"}
COMMANDS = ("run", "migrate", "demo")
ENV_PREFIX = "PUPPYLOG_"
# The database's schema is another build's (a newer puppylogd migrated it): restarting this
# build cannot help, so the systemd unit lists it in RestartPreventExitStatus= next to 2.
EXIT_SCHEMA = 3
ENV_FILE_ENV = "PUPPYLOG_ENV_FILE"
# Under systemd (ConfigurationDirectory=puppylog) this is /etc/puppylog/puppylogd.env, the
# unit's EnvironmentFile=; re-reading it is what makes `systemctl reload` see an edit.
ENV_FILE_NAME = "puppylogd.env"
# PUPPYLOG_* variables that are not Settings fields.
KNOWN_ENV = (ENV_FILE_ENV, BINDIR_ENV)


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def _choices(info: FieldInfo) -> tuple[str, ...] | None:
    if typing.get_origin(info.annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(info.annotation))
    return None


# Settings that may hold a secret: their help never shows a value, not even a computed one.
_SECRET_SETTINGS = frozenset({"dsn", "dsn_file"})


def _default_text(name: str, info: FieldInfo) -> str:
    """Return a setting's default as the README's table spells it (``10``, ``false``, ``unset``).

    The model's default, never the environment's value: help must not show a DSN from
    PUPPYLOG_DSN, nor pass a setting someone made for the default.
    """
    if name in _SECRET_SETTINGS:
        value = None
    elif info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _field_help(name: str, info: FieldInfo) -> str:
    env = f"PUPPYLOG_{name.upper()}"
    text = info.description or ""
    default = _default_text(name, info).replace("%", "%%")  # argparse %-formats help
    return f"{text} (env {env}; default {default})".strip()


def add_settings_arguments(parser: argparse.ArgumentParser, only: Sequence[str] = ()) -> None:
    """Add one flag per setting (``--threshold`` for ``threshold``), defaults left to Settings."""
    for name, info in Settings.model_fields.items():
        if only and name not in only:
            continue
        flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _field_help(name, info)}
        if _is_bool(info):
            # --no-once too: a flag must be able to override PUPPYLOG_ONCE=true.
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "log_files":
            kwargs["action"] = "append"
            kwargs["metavar"] = "PATH"
        else:
            kwargs["metavar"] = name.upper()
            if (choices := _choices(info)) is not None:
                # Shown in --help, checked by Settings: a bad value then gets the one-line
                # "invalid setting" error and exit 2, not argparse's usage dump.
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
        parser.add_argument(flag, **kwargs)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build Settings: environment first, then every flag given on the command line."""
    overrides = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def read_env_file(path: Path) -> dict[str, str]:
    """Return the ``PUPPYLOG_*`` assignments of a systemd ``EnvironmentFile=``-style file.

    A line that cannot be parsed is a ValueError naming it: skipped, it would leave its
    setting at the default without a word.
    """
    from dotenv.parser import parse_stream

    if not path.is_file():
        raise FileNotFoundError(f"environment file {path} does not exist")
    values = {}
    with path.open(encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                text = binding.original.string.strip()
                raise ValueError(
                    f"environment file {path}, line {binding.original.line}: cannot parse {text!r}"
                )
            if binding.key and binding.key.startswith(ENV_PREFIX) and binding.value is not None:
                values[binding.key] = binding.value
    return values


def default_env_file() -> tuple[Path | None, bool]:
    """Return the environment file to (re)read and whether it must exist.

    ``$PUPPYLOG_ENV_FILE`` (required), else ``$CONFIGURATION_DIRECTORY/puppylogd.env`` when
    systemd set that variable (optional, like ``EnvironmentFile=-``), else none.
    """
    if explicit := os.environ.get(ENV_FILE_ENV):
        return Path(explicit), True
    if conf := os.environ.get("CONFIGURATION_DIRECTORY"):
        return Path(conf.split(":")[0]) / ENV_FILE_NAME, False
    return None, False


class ConfigSource:
    """Settings from the environment, an optional environment file and the CLI flags.

    A running process cannot see its environment being changed, so SIGHUP re-reads the
    environment file (the unit's ``EnvironmentFile=``). Precedence, at start and on every
    reload: CLI flags, then the file, then the environment the process started with.
    A variable that came from the file at start and has since been removed from it is gone.
    """

    def __init__(self, args: argparse.Namespace, env_file: Path | None, required: bool) -> None:
        self.args = args
        self.env_file = env_file
        self.required = required
        self.base = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        self.base.pop(ENV_FILE_ENV, None)
        # Why the optional file could not be read, if it could not (see _file_values).
        self.unreadable: str | None = None
        # The file's assignments as the last load() read them.
        self._loaded: dict[str, str] = {}
        try:
            initial = self._file_values() or {}
        except (OSError, ValueError):  # load() reports it
            initial = {}
        # Under systemd the file's values are already in our environment: they belong to
        # the file, not to the base, so removing one from the file removes it here too.
        for key, value in initial.items():
            if self.base.get(key) == value:
                del self.base[key]

    def _file_values(self) -> dict[str, str] | None:
        """Return the file's assignments; None when the optional file cannot be read.

        systemd reads ``EnvironmentFile=`` as root, so the file may be root-only (a common
        setup, and what older docs advised): its values are then in our environment already,
        and only re-reading it on reload is impossible.
        """
        if self.env_file is None:
            return {}
        try:
            return read_env_file(self.env_file)
        except FileNotFoundError:
            if self.required:
                raise
            return {}
        except PermissionError as exc:
            if self.required:
                raise
            self.unreadable = (
                f"cannot read the environment file {self.env_file} ({exc.strerror}): make it "
                f"readable by this user (root:puppylog 0640) so that reload can re-read it"
            )
            return None

    def names(self) -> set[str]:
        """Return the ``PUPPYLOG_*`` names given: the environment, the file as last loaded."""
        return set(self.base) | set(self._loaded)

    def load(self) -> Settings:
        """Build the settings now; on any error the environment is left as it was."""
        self._loaded = self._file_values() or {}
        values = {**self.base, **self._loaded}
        before = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        _replace_env(values)
        try:
            return settings_from_args(self.args)
        except BaseException:
            _replace_env(before)
            raise


def _replace_env(values: dict[str, str]) -> None:
    keep = os.environ.get(ENV_FILE_ENV)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        if key not in values:
            del os.environ[key]
    os.environ.update(values)
    if keep is not None:
        os.environ[ENV_FILE_ENV] = keep


def _field_comments() -> None:
    """Use each field's one-line source comment as its --help text (one source of truth)."""
    import inspect

    from puppylogd import config

    source = inspect.getsource(config).splitlines()
    for i, line in enumerate(source):
        stripped = line.strip()
        if not stripped.startswith("# ") or i + 1 >= len(source):
            continue
        name = source[i + 1].strip().split(":", 1)[0]
        info = Settings.model_fields.get(name)
        if info is not None and not info.description:
            info.description = stripped[2:]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``puppylogd``."""
    _field_comments()
    parser = argparse.ArgumentParser(
        prog="puppylogd",
        description="Tail HTTP access logs into PostgreSQL; stats and alerts in the database.",
        epilog="The settings, with their defaults and PUPPYLOG_* variables: puppylogd run --help.",
    )
    parser.add_argument("--version", action="version", version=f"puppylogd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="follow the log files (the default command)")
    add_settings_arguments(run)
    run.add_argument(
        "--env-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="PUPPYLOG_* assignments read at start and again on SIGHUP (env "
        f"{ENV_FILE_ENV}; default $CONFIGURATION_DIRECTORY/{ENV_FILE_NAME} under systemd)",
    )
    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    add_settings_arguments(
        migrate, only=("dsn", "dsn_file", "state_dir", "log_level", "log_format")
    )
    demo = sub.add_parser(
        "demo",
        help="the whole system at once: daemon, a traffic generator with a burst, and the watch",
    )
    add_settings_arguments(demo)
    demo.add_argument("--plain", action="store_true", help="plain watch output, one line per event")
    demo.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    return parser


def _split_command(argv: list[str]) -> list[str]:
    """Make ``run`` the default command, so ``puppylogd --once`` works."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["run", *argv]


# The cyclic GC collects its youngest generation after every 700 net new container objects by
# default, and every parsed row is a tuple: a 20,000-row batch set off about 30 passes, each
# visiting every row still in flight (bench/'s 1M-line file: 0.5 s of the daemon's 6 s of CPU).
# Rows reference nothing that points back, so reference counting frees them after their COPY;
# a threshold above the rows of the batches in flight (two or three of batch_lines) lets them
# go before any pass sees them. Cyclic garbage then waits for up to this many objects, so only
# --once uses it: a one-shot run ends soon, while the long-running daemon must keep its memory
# flat (the one 5-minute 50k lines/s bench run with it grew 58 -> 67 MB, peak 72: no margin).
GC_YOUNG_THRESHOLD = 100_000


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Raise the youngest GC generation's threshold while ``--once`` runs, then restore it."""
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def main(argv: Sequence[str] | None = None) -> int:
    """Run puppylogd; exit 2 with one clear line on a bad setting, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(_split_command(list(sys.argv[1:] if argv is None else argv)))
    if args.command != "run":
        release_reloads()  # only `run` reloads; a hangup ends the others as it always did
    env_file, required = default_env_file()
    if getattr(args, "env_file", None) is not None:
        env_file, required = args.env_file, True
    source = ConfigSource(args, env_file, required)
    try:
        settings = source.load()
    except ValidationError as exc:
        print(f"puppylogd: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # the environment file: missing, unparsable
        print(f"puppylogd: error: {exc}", file=sys.stderr)
        return 2
    try:
        settings.resolved_dsn()  # an unreadable dsn_file is a bad setting: say so now
    except (OSError, ValueError) as exc:
        print(f"puppylogd: error: invalid setting dsn_file: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from puppylogd.demo import run_demo

        return run_demo(settings, plain=bool(args.plain), duration=args.duration)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("puppylogd")
    if source.unreadable:
        log.warning(
            source.unreadable + "; until then the settings systemd loaded from it at start apply"
        )
    for warning in unknown_settings(source.names(), known=KNOWN_ENV):
        log.warning(warning)
    if getattr(args, "dsn", None) and dsn_has_password(args.dsn):
        log.warning(PASSWORD_ON_COMMAND_LINE)
    if args.command == "migrate":
        try:
            return asyncio.run(_migrate(settings))
        except EmbeddedError as exc:
            log.error("cannot start", error=str(exc))
            return 1

    def reload() -> Settings:
        source.unreadable = None
        new = source.load()
        if source.unreadable:
            raise PermissionError(source.unreadable)
        configure_logging(new.log_level, new.log_format)
        return new

    from puppylogd.daemon import Daemon, DaemonError
    from puppylogd.ingest import StreamOwnedElsewhere
    from puppylogd.migrations import MigrationError, SchemaMismatch

    try:
        with fewer_gc_passes() if settings.once else contextlib.nullcontext():
            return asyncio.run(Daemon(settings, reload=reload).run())
    except SchemaMismatch as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_SCHEMA
    except (DaemonError, EmbeddedError, MigrationError, StreamOwnedElsewhere) as exc:
        log.error("cannot start", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear (JSON) log line instead of a bare traceback
        log.error("daemon failed", error=repr(exc), exc_info=exc)
        return 1


async def _migrate(settings: Settings) -> int:
    """Apply migrations (the embedded database is started for it when no DSN is set)."""
    from puppylogd import db
    from puppylogd.daemon import open_embedded
    from puppylogd.migrations import MigrationError, SchemaMismatch, apply_migrations

    log = structlog.get_logger("puppylogd")
    failures: tuple[type[BaseException], ...] = (*db.DB_ERRORS, MigrationError)
    dsn = settings.resolved_dsn()
    cluster = None
    own = False
    if dsn is None:
        cluster, dsn, own = await open_embedded(settings)
    try:
        try:
            conn = await db.connect(dsn, application_name="puppylogd-migrate")
            try:
                applied = await apply_migrations(conn)
            finally:
                await conn.close()
        except failures as exc:
            # e.g. a role without DDL rights, or a schema from another build: one clear line.
            log.error("migrations failed", error=str(exc), dsn=mask_dsn(dsn))
            return EXIT_SCHEMA if isinstance(exc, SchemaMismatch) else 1
        log.info("migrations applied" if applied else "schema is up to date", applied=applied)
        return 0
    finally:
        if cluster is not None and own:
            await asyncio.to_thread(cluster.stop)
        if cluster is not None:
            cluster.release()
