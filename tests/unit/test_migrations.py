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


# SHA-256 of every migration that has been released. The runner refuses to start on a
# database whose recorded checksum differs, so editing a released file (even a comment)
# would lock every existing installation out: change the schema with a new migration.
# A migration's checksum goes here in the commit that adds it (a migration left out of this
# table could be edited unnoticed: the test below refuses one).
RELEASED = {
    1: "4665fbb52bf74d7ae08236b4655a9fc99fe13408708495351971f476cba47d05",
    2: "37043eb3fddd346635f47c8bff90fffa0660431982739c22c901f9943d8cc879",
    3: "9af92a7233090de1e55c6c0f797bfa8a31fb3ecade59c25d24803bcae803892d",
    4: "39b9da6456100af50fa6e08a19620e5df39197ac49015c9c2c8651f1c9f8e36a",
    5: "e5b28eb9917431e93214c6b9ead15053918b445f83527bed4e78b6037fd727d6",
    6: "97ad24affd916c23fbc0d5e59758c030d40a4108bf3fb9b07b4f5ddef33766de",
    7: "2a8d61b94454cc5ea0821cdc679cd499d051a7f3cd04f8817637fe1d7cff6755",
    8: "bf5b933f4a5adff33a09a0a1f5586cc0ca2ca58812bca6cfcf999a88b80d0af6",
    9: "89b8d8355709c728832df70db06edfc6d16f070757a98434e30be79d0554d014",
}


def test_released_migrations_are_never_edited() -> None:
    shipped = {m.version: m for m in load_migrations()}
    assert set(shipped) <= set(RELEASED), (
        f"migrations {sorted(set(shipped) - set(RELEASED))} have no recorded checksum: "
        "add them to RELEASED"
    )
    for version, checksum in RELEASED.items():
        assert version in shipped, f"released migration {version:04d} is missing"
        assert shipped[version].checksum == checksum, (
            f"{shipped[version].label}.sql has changed since it was released; "
            "existing databases would refuse this build: revert it and add a new migration"
        )


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
