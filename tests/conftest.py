"""Suite-wide PostgreSQL fixtures: one server per session, a migrated clone per test.

Fixtures (see each docstring):

* ``pg_server`` (session) -- :class:`tests.pg.PgServer`: ``$PUPPYLOG_TEST_DSN`` if set, else a
  throwaway embedded cluster (fsync off) started once and stopped at the end of the session.
* ``pg_template`` (session) -- name of the migrated template database on ``pg_server``.
* ``db_dsn`` -- DSN of a fresh database cloned from the template, dropped after the test.
* ``db`` -- an asyncpg connection to ``db_dsn``, closed after the test.
* ``make_cluster`` -- factory of separate, started, migrated clusters for destructive tests.
* ``pg_tmp_dir`` -- an empty directory the server account can traverse, for hand-made
  clusters; any cluster left running in it is killed afterwards.
* ``pg_seed`` (session) -- an initdb'd, cleanly stopped data directory to copy clusters from.
* ``unique_name`` -- :func:`tests.pg.unique_name`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from puppylogd.embedded import Cluster
from tests import pg


class ClusterFactory(Protocol):
    """Signature of the ``make_cluster`` fixture."""

    def __call__(self, *, migrate: bool = True, **kwargs: Any) -> Cluster:
        """Start a new cluster (``kwargs`` go to :class:`Cluster`), migrated unless told not."""
        ...


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    """Yield the session's root for test clusters: short, traversable, on tmpfs if possible."""
    # Leftovers of a run killed with SIGKILL (no teardown ran) would otherwise live forever.
    pg.reap_stale_dirs()
    root = pg.make_traversable_dir("puppylog-test-")
    try:
        yield root
    finally:
        pg.remove_tree(root)


@pytest.fixture(scope="session")
def pg_seed(pg_base_dir: Path) -> Path:
    """Return a freshly initdb'd data directory (with database puppylog), never started.

    Clusters are copied from it (``Cluster(template=...)``), which is much faster than initdb.
    """
    seed = Cluster(pg_base_dir / "seed", fsync=False)
    seed.init()
    return seed.data_dir


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> pg.PgServer:
    """Return the server the suite uses; an embedded cluster unless $PUPPYLOG_TEST_DSN is set."""
    if external := os.environ.get(pg.TEST_DSN_ENV):
        return pg.PgServer(admin_dsn=external, cluster=None)
    base: Path = request.getfixturevalue("pg_base_dir")
    seed: Path = request.getfixturevalue("pg_seed")
    cluster = pg.track(Cluster(base / "main", fsync=False, template=seed))
    # Registered before start so even a half-started server is stopped (also on Ctrl-C).
    request.addfinalizer(lambda: pg.dispose(cluster))
    cluster.start()
    return pg.PgServer(admin_dsn=cluster.dsn(), cluster=cluster)


@pytest.fixture(scope="session")
def pg_template(pg_server: pg.PgServer, request: pytest.FixtureRequest) -> str:
    """Return the name of a migrated database that every ``db_dsn`` is cloned from."""
    admin = pg_server.admin_dsn
    if pg_server.cluster is None:
        # A shared server may run other sessions: use a private name and drop it afterwards.
        name = pg.unique_name("puppylog_template")
        request.addfinalizer(lambda: pg.run_async(lambda: pg.drop_database(admin, name)))
    else:
        name = "puppylog_template"

    async def build() -> None:
        await pg.drop_database(admin, name)
        await pg.create_database(admin, name)
        await pg.migrate(pg_server.dsn(name))

    pg.run_async(build)
    return name


@pytest.fixture
def db_dsn(pg_server: pg.PgServer, pg_template: str) -> Iterator[str]:
    """Yield the DSN of a new migrated database, private to this test and dropped after it."""
    name = pg.unique_name("t")
    admin = pg_server.admin_dsn
    pg.run_async(lambda: pg.create_database(admin, name, template=pg_template))
    try:
        yield pg_server.dsn(name)
    finally:
        pg.run_async(lambda: pg.drop_database(admin, name))


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Yield an asyncpg connection to this test's database (``db_dsn``)."""
    conn = await asyncpg.connect(db_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def pg_tmp_dir() -> Iterator[Path]:
    """Yield an empty directory the server account can traverse; clean it up afterwards."""
    root = pg.make_traversable_dir("puppylog-t-")
    try:
        yield root
    finally:
        pg.remove_tree(root)


@pytest.fixture
def make_cluster(pg_base_dir: Path, pg_seed: Path) -> Iterator[ClusterFactory]:
    """Yield a factory of separate started clusters (own dir and socket), torn down after.

    ``make_cluster(migrate=True, **kwargs)``: kwargs go to :class:`Cluster` (default
    ``fsync=False``; copied from ``pg_seed`` unless ``bindir`` or ``template`` is given); the
    ``puppylog`` database is migrated unless ``migrate=False``. Use ``cluster.dsn()``.
    """
    made: list[Cluster] = []

    def factory(*, migrate: bool = True, **kwargs: Any) -> Cluster:
        kwargs.setdefault("fsync", False)
        if "bindir" not in kwargs:
            kwargs.setdefault("template", pg_seed)
        base = pg_base_dir / pg.unique_name("c")
        cluster = pg.track(Cluster(base, **kwargs))
        made.append(cluster)
        cluster.start()
        if migrate:
            pg.run_async(lambda: pg.migrate(cluster.dsn()))
        return cluster

    try:
        yield factory
    finally:
        for cluster in made:
            pg.dispose(cluster)
            pg.remove_tree(cluster.base_dir)


@pytest.fixture(name="unique_name")
def unique_name_fixture() -> Callable[[str], str]:
    """Return a function making fresh identifiers: ``unique_name("t") -> "t_1a2b3c4d5e6f"``."""
    return pg.unique_name
