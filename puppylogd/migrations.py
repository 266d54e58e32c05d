"""Apply the SQL migrations in order, once, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

# Any 64-bit constant shared by every puppylogd: several daemons starting together queue
# behind one another instead of racing to create the same objects.
MIGRATION_LOCK_KEY = 0x7075707079_6C6F67 & 0x7FFFFFFFFFFFFFFF

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, name and SQL text."""

    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """Return the folder holding the migrations: inside the wheel, else the source tree."""
    packaged = Path(str(resources.files("puppylogd"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Read and order the migration files; refuse gaps and strange names."""
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name not NNNN_description.sql: {path.name}")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 0001.. without gaps, got {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    """Return the versions recorded in puppylog.schema_migrations (empty if none)."""
    exists = await conn.fetchval("SELECT to_regclass('puppylog.schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    rows = await conn.fetch("SELECT version FROM puppylog.schema_migrations")
    return {int(r["version"]) for r in rows}


async def apply_migrations(conn: asyncpg.Connection, folder: Path | None = None) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    Holds a session advisory lock for the whole run so concurrent starts are safe; re-running
    is a no-op. When every migration is already applied nothing is created or locked, so a
    role without DDL rights (a ``puppylog_writer`` daemon) may call it: ``CREATE SCHEMA IF
    NOT EXISTS`` alone needs CREATE on the database even when the schema exists.
    """
    migrations = load_migrations(folder)
    if {m.version for m in migrations} <= await applied_versions(conn):
        return []
    done: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS puppylog;
            CREATE TABLE IF NOT EXISTS puppylog.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        have = await applied_versions(conn)
        for migration in migrations:
            if migration.version in have:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO puppylog.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.append(f"{migration.version:04d}_{migration.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return done
