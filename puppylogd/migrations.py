"""Apply the SQL migrations in order, once, under an advisory lock.

Each applied migration is recorded with a SHA-256 of its text. A database whose recorded
migrations differ from the shipped files (edited after they were applied, or applied by a
newer puppylogd) is refused with a clear error rather than run against a schema the code does
not know.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from puppylogd import db

# Any 64-bit constant shared by every puppylogd: several daemons starting together queue
# behind one another instead of racing to create the same objects.
MIGRATION_LOCK_KEY = 0x7075707079_6C6F67 & 0x7FFFFFFFFFFFFFFF

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The schema does not match the shipped migrations, or this role may not apply them."""


class SchemaMismatch(MigrationError):
    """The database's applied migrations are not this build's: only another build fixes it.

    A newer puppylogd migrated the database, or another development build made it; unlike a
    missing grant, no restart of this build can succeed (the CLI's exit status 3).
    """


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, name and SQL text."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


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


async def recorded_migrations(conn: asyncpg.Connection) -> dict[int, str | None]:
    """Return version -> recorded checksum from puppylog.schema_migrations (empty if none)."""
    exists = await conn.fetchval("SELECT to_regclass('puppylog.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    # Through jsonb: a table made before checksums were kept has no such column (NULL then).
    rows = await conn.fetch(
        "SELECT version, to_jsonb(m) ->> 'checksum' AS checksum FROM puppylog.schema_migrations m"
    )
    return {int(r["version"]): r["checksum"] for r in rows}


def verify(migrations: list[Migration], recorded: dict[int, str | None]) -> None:
    """Raise SchemaMismatch unless every recorded migration is one of ``migrations``, unchanged."""
    shipped = {m.version: m for m in migrations}
    newer = sorted(v for v in recorded if v not in shipped)
    if newer:
        raise SchemaMismatch(
            f"the database has migration {newer[-1]:04d}, newer than this puppylogd knows "
            f"(it ships up to {max(shipped, default=0):04d}): upgrade puppylogd"
        )
    for version, checksum in sorted(recorded.items()):
        migration = shipped[version]
        if checksum != migration.checksum:
            why = (
                "was recorded without a checksum (by an older development build)"
                if checksum is None
                else "differs from the one this puppylogd ships"
            )
            raise SchemaMismatch(
                f"migration {migration.label} applied to this database {why}: the schema "
                "was made by another build and cannot be upgraded in place; recreate the "
                "database (the embedded one: stop puppylogd and move its state directory away)"
            )


async def apply_migrations(conn: asyncpg.Connection, folder: Path | None = None) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    Holds a session advisory lock for the whole run so concurrent starts are safe; re-running
    is a no-op. When every migration is already applied nothing is created or locked, so a
    role without DDL rights (a ``puppylog_writer`` daemon) may call it: ``CREATE SCHEMA IF
    NOT EXISTS`` alone needs CREATE on the database even when the schema exists. Raises
    MigrationError if the applied migrations are not the shipped ones (see the module doc).
    """
    migrations = load_migrations(folder)
    try:
        recorded = await recorded_migrations(conn)
    except asyncpg.InsufficientPrivilegeError as exc:
        role, _ = await db.session_role(conn)
        raise MigrationError(
            f"role {role} may not read schema puppylog ({exc}): GRANT puppylog_writer TO {role}"
        ) from exc
    verify(migrations, recorded)
    if {m.version for m in migrations} <= set(recorded):
        return []
    try:
        return await _apply_pending(conn, migrations)
    except asyncpg.InsufficientPrivilegeError as exc:
        # A role made for daemons (no CREATE on the database) meeting a new or older schema.
        role, dbname = await db.session_role(conn)
        raise MigrationError(
            f"role {role} may not create the puppylog schema in database {dbname} ({exc}): "
            "run `puppylogd migrate` as the database's owner first"
        ) from exc


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, under the advisory lock; return their names."""
    done: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS puppylog;
            CREATE TABLE IF NOT EXISTS puppylog.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        recorded = await recorded_migrations(conn)  # another daemon may have migrated
        verify(migrations, recorded)
        for migration in migrations:
            if migration.version in recorded:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO puppylog.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return done
