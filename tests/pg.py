"""Helpers for tests that need PostgreSQL: temp dirs, names, databases, cluster cleanup."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from puppylogd.embedded import Cluster, EmbeddedError, quote_ident
from puppylogd.migrations import apply_migrations

TEST_DSN_ENV = "PUPPYLOG_TEST_DSN"
TMPDIR_ENV = "PUPPYLOG_TEST_TMPDIR"
_OWNER_FILE = ".owner-pid"

T = TypeVar("T")

# Every cluster a test helper started; killed at interpreter exit if a teardown never ran.
_LIVE: dict[Path, Cluster] = {}


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, on a private loop in its own thread.

    A thread keeps it clear of pytest-asyncio's loop (asyncio.run on this thread would
    replace the current event loop).
    """

    async def main() -> T:
        return await factory()

    with ThreadPoolExecutor(1, thread_name_prefix="pg-admin") as pool:
        return pool.submit(asyncio.run, main()).result()


def unique_name(prefix: str = "t") -> str:
    """Return a fresh lower-case identifier (database, table, role...)."""
    return f"{prefix}_{secrets.token_hex(6)}"


def _temp_parent() -> Path:
    """Return where test clusters live: $PUPPYLOG_TEST_TMPDIR, else a roomy /dev/shm, else /tmp.

    A tmpfs spares the disk's file system the churn of creating and deleting thousands of
    files per cluster (ext4 inode allocation slows CREATE DATABASE ten-fold after a while).
    """
    if configured := os.environ.get(TMPDIR_ENV):
        return Path(configured)
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        vfs = os.statvfs(shm)
        world_writable = shm.stat().st_mode & 0o1777 == 0o1777
        if world_writable and vfs.f_bavail * vfs.f_frsize >= 2 * 1024**3:
            return shm
    if os.geteuid() == 0 and os.path.isdir("/tmp"):
        return Path("/tmp")  # $TMPDIR might lie under /root, closed to the server account
    return Path(tempfile.gettempdir())


def make_traversable_dir(prefix: str = "puppylog-test-") -> Path:
    """Create a short temp dir that the unprivileged server account can enter (0755).

    pytest's tmp_path lives under a 0700 directory, which a server started by root (running as
    the ``puppylog`` account) cannot traverse; /dev/shm and /tmp can. The dir records the
    creating pid so :func:`reap_stale_dirs` can clean up after a run that was killed outright.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_temp_parent()))
    os.chmod(path, 0o755)
    (path / _OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
    return path


def reap_stale_dirs(prefix: str = "puppylog-t") -> None:
    """Remove (killing their clusters) temp dirs whose creating test process is gone."""
    for path in _temp_parent().glob(prefix + "*"):
        try:
            owner = int((path / _OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            remove_tree(path)


def track(cluster: Cluster) -> Cluster:
    """Remember a started cluster so it is killed at exit if its teardown never ran."""
    _LIVE[cluster.base_dir] = cluster
    return cluster


def untrack(cluster: Cluster) -> None:
    """Forget a cluster that was torn down."""
    _LIVE.pop(cluster.base_dir, None)


def dispose(cluster: Cluster) -> None:
    """Stop a test cluster whatever its state (paused, killed, running) and forget it."""
    try:
        cluster.stop(mode="immediate", timeout=10.0)
    except EmbeddedError:
        cluster.kill()
    finally:
        untrack(cluster)


def kill_clusters_under(root: Path) -> None:
    """Kill every cluster whose data directory lies under root (leftovers of a failed test)."""
    for pid_file in root.glob("**/pgdata/postmaster.pid"):
        Cluster(pid_file.parent.parent).kill()


def remove_tree(root: Path) -> None:
    """Kill the clusters under root, then delete it."""
    if root.exists():
        kill_clusters_under(root)
        shutil.rmtree(root, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_LIVE.values()):
        # Last-ditch cleanup at exit: never raise.
        with contextlib.suppress(Exception):
            cluster.kill()
    _LIVE.clear()


def with_database(dsn: str, dbname: str) -> str:
    """Return the URL ``dsn`` pointing at database ``dbname`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


@dataclass(frozen=True, slots=True)
class PgServer:
    """The server the suite uses: the session's embedded cluster or ``$PUPPYLOG_TEST_DSN``."""

    admin_dsn: str
    cluster: Cluster | None

    def dsn(self, dbname: str) -> str:
        """Return the DSN of database ``dbname`` on this server."""
        return with_database(self.admin_dsn, dbname)


async def create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    """Create database ``name`` (a copy of ``template`` if given)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {quote_ident(template)}"
        await conn.execute(sql)
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is still using it."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def migrate(dsn: str) -> list[str]:
    """Apply puppylog's migrations to the database at ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()
