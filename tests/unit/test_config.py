"""Settings validation: a bad setting is one line naming it, never a wait or a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from puppylogd.cli import read_env_file
from puppylogd.config import Settings, check_dsn, describe_error, unknown_settings


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("host=db dbname=x", "key=value connection strings are not supported"),
        ("not a dsn", "not a URI"),
        ("mysql://db/x", "not mysql://"),
        ("postgresql://u@/x?sslmode=bogus", "sslmode must be one of"),
        ("postgresql://u:pw@localhost:abc/x", "not 'abc'"),
        ("postgresql://u@localhost:99999/x", "not '99999'"),
        ("postgresql://u@/x?port=0", "not '0'"),
        ("postgres://u:pw@[::1", "not a valid URI"),
        ("  ", "the DSN is empty"),
    ],
)
def test_a_dsn_asyncpg_cannot_use_is_refused_without_echoing_it(dsn: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        check_dsn(dsn)
    assert says in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://puppylog@/puppylog?host=/run/puppylog&port=5432",
        "postgres://u:p%40ss@db.example.net:6432/logs?sslmode=verify-full",
        "postgresql://a:5432,b:5433/db",
        "postgresql://[::1]:5432/db",
        "postgresql:///db",
    ],
)
def test_usable_dsns_pass(dsn: str) -> None:
    assert check_dsn(dsn) == dsn


def one_line(**settings: object) -> str:
    with pytest.raises(ValidationError) as info:
        Settings(**settings)  # type: ignore[arg-type]
    line = describe_error(info.value)
    assert "\n" not in line
    return line


def test_bad_dsn_setting_names_its_flag_and_variable() -> None:
    line = one_line(dsn="host=db dbname=x")
    assert line.startswith("invalid setting dsn (--dsn / PUPPYLOG_DSN): key=value")


def test_a_dsn_file_with_a_bad_dsn_names_the_file(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("mysql://db/x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"the DSN in {dsn_file}: the scheme must be"):
        Settings(dsn_file=dsn_file).resolved_dsn()
    dsn_file.write_text("\n", encoding="utf-8")  # an empty file: not localhost:5432
    with pytest.raises(ValueError, match="the DSN is empty"):
        Settings(dsn_file=dsn_file).resolved_dsn()


def test_the_same_file_through_a_symlink_is_listed_twice(tmp_path: Path) -> None:
    real = tmp_path / "access.log"
    real.write_text("", encoding="utf-8")
    link = tmp_path / "link.log"
    link.symlink_to(real)
    line = one_line(log_files=[real, link])
    assert "--log-file / PUPPYLOG_LOG_FILES" in line
    assert f"({real} and {link} are one file)" in line
    # Two different files are fine, and the configured (symlink) path is what is followed.
    other = tmp_path / "other.log"
    assert Settings(log_files=[link, other]).log_files == [link, other]


def test_state_dir_is_absolute_and_not_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "state_dir (--state-dir / PUPPYLOG_STATE_DIR): must not be empty" in one_line(
        state_dir=""
    )
    monkeypatch.chdir(tmp_path)
    assert Settings(state_dir=Path("state")).state_dir == tmp_path / "state"


def test_an_empty_log_file_path_is_refused() -> None:
    assert one_line(log_files=[""]) == (
        "invalid setting log_files (--log-file / PUPPYLOG_LOG_FILES): "
        "a log file path must not be empty"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_thresholds_must_be_finite(value: str) -> None:
    assert "threshold (--threshold / PUPPYLOG_THRESHOLD)" in one_line(threshold=value)


def test_recovery_above_threshold_names_both() -> None:
    line = one_line(threshold=10, recovery_threshold=20)
    assert line == (
        "invalid settings: recovery_threshold (20; --recovery-threshold / "
        "PUPPYLOG_RECOVERY_THRESHOLD) must not exceed threshold (10)"
    )


def test_log_level_and_format_ignore_case() -> None:
    settings = Settings(log_level="DEBUG", log_format="JSON")
    assert (settings.log_level, settings.log_format) == ("debug", "json")


def test_unknown_variables_are_named_with_the_likely_one() -> None:
    warnings = unknown_settings(
        [
            "PUPPYLOG_THRESHHOLD",
            "PUPPYLOG_THRESHOLD",
            "PUPPYLOG_PG_BINDIR",
            "PATH",
            "PUPPYLOG_COLOUR_SCHEME",
        ],
        known=["PUPPYLOG_PG_BINDIR"],
    )
    assert warnings == [
        "PUPPYLOG_COLOUR_SCHEME is not a setting and is ignored",
        "PUPPYLOG_THRESHHOLD is not a setting and is ignored (did you mean PUPPYLOG_THRESHOLD?)",
    ]


def test_an_environment_file_line_that_cannot_be_parsed_is_an_error(tmp_path: Path) -> None:
    env_file = tmp_path / "puppylogd.env"
    env_file.write_text('# comment\nPUPPYLOG_GROUP=web\nPUPPYLOG_THRESHOLD="5\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{env_file}, line 3: cannot parse") as info:
        read_env_file(env_file)
    assert "PUPPYLOG_THRESHOLD" in str(info.value)
    env_file.write_text(
        "PUPPYLOG_GROUP=web\nexport PUPPYLOG_THRESHOLD='5'\nOTHER=1\n", encoding="utf-8"
    )
    assert read_env_file(env_file) == {"PUPPYLOG_GROUP": "web", "PUPPYLOG_THRESHOLD": "5"}
    assert os.environ.get("PUPPYLOG_GROUP") != "web"  # reading does not apply it
