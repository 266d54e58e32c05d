"""The shipped migrations, and the check that a database's applied ones are the same."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from puppylogd.migrations import Migration, MigrationError, load_migrations, migrations_dir, verify

SOURCE = Path(__file__).resolve().parents[2] / "migrations"


def test_shipped_migrations_are_numbered_and_checksummed() -> None:
    found = load_migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert migrations_dir().is_dir()
    for m in found:
        text = (SOURCE / f"{m.label}.sql").read_text(encoding="utf-8")
        assert m.checksum == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_gaps_and_bad_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        load_migrations(tmp_path)
    (tmp_path / "0002-b.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNNN_description"):
        load_migrations(tmp_path)


SHIPPED = [Migration(1, "schema", "CREATE TABLE a ();"), Migration(2, "more", "SELECT 2;")]


def test_matching_or_partly_applied_databases_pass() -> None:
    verify(SHIPPED, {})
    verify(SHIPPED, {1: SHIPPED[0].checksum})
    verify(SHIPPED, {1: SHIPPED[0].checksum, 2: SHIPPED[1].checksum})


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        (
            {1: SHIPPED[0].checksum, 2: "0" * 64},
            "migration 0002_more applied to this database differs",
        ),
        ({1: None}, "0001_schema applied to this database was recorded without a checksum"),
        ({1: SHIPPED[0].checksum, 3: "x"}, "has migration 0003, newer than this puppylogd knows"),
    ],
)
def test_foreign_schemas_are_refused(recorded: dict[int, str | None], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        verify(SHIPPED, recorded)
