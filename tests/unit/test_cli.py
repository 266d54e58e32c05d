"""The pure parts of ``puppylogd.cli`` (the command itself is run in tests/integration)."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest

from puppylogd import cli
from puppylogd.cli import GC_YOUNG_THRESHOLD, fewer_gc_passes


def _young_passes_while_rows_live(rows: int) -> int:
    """Count youngest-generation GC passes while ``rows`` row-like tuples are built, then freed."""
    passes = 0

    def count(phase: str, info: dict[str, Any]) -> None:
        nonlocal passes
        if phase == "start" and info["generation"] == 0:
            passes += 1

    gc.collect()  # start from an empty youngest generation
    gc.callbacks.append(count)
    try:
        batch = [(i, "host", None, "/path", 200, str(i)) for i in range(rows)]
        del batch
    finally:
        gc.callbacks.remove(count)
    return passes


def test_rows_of_batches_in_flight_set_off_no_gc_pass() -> None:
    """Three default batches of rows live at once: no pass inside, the usual ~85 without."""
    assert gc.isenabled()
    rows = 3 * 20_000
    assert rows < GC_YOUNG_THRESHOLD
    assert _young_passes_while_rows_live(rows) > 50  # the default threshold (700)
    with fewer_gc_passes():
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert _young_passes_while_rows_live(rows) == 0


def test_thresholds_are_restored_even_after_an_error() -> None:
    """Whatever happens inside, the process's GC settings come back unchanged."""
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_gc_passes():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before


def test_a_root_only_environment_file_keeps_what_systemd_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd read the unit's root-only file: the daemon starts with it, reload says why not.

    Root reads any file, so the refusal the service user gets is simulated at the read.
    """
    env_file = tmp_path / "puppylogd.env"
    env_file.write_text("PUPPYLOG_THRESHOLD=7\n", encoding="utf-8")
    monkeypatch.setenv("PUPPYLOG_THRESHOLD", "7")  # what systemd's EnvironmentFile= set

    def refuse(path: Path) -> dict[str, str]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cli, "read_env_file", refuse)
    args = cli.build_parser().parse_args(["run"])
    source = cli.ConfigSource(args, env_file, required=False)
    assert source.load().threshold == 7
    assert source.unreadable is not None
    assert str(env_file) in source.unreadable and "root:puppylog 0640" in source.unreadable
    # Named explicitly (--env-file, $PUPPYLOG_ENV_FILE), an unreadable file is an error.
    with pytest.raises(PermissionError):
        cli.ConfigSource(args, env_file, required=True).load()


def test_a_switch_set_in_the_environment_can_be_turned_off_by_a_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUPPYLOG_ONCE", "true")
    parser = cli.build_parser()
    assert cli.settings_from_args(parser.parse_args(["run"])).once is True
    assert cli.settings_from_args(parser.parse_args(["run", "--no-once"])).once is False
    assert cli.settings_from_args(parser.parse_args(["run", "--from-end"])).from_end is True


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_help_shows_every_settings_default_but_no_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's defaults, as the README's table has them; never the environment's values."""
    from puppylogd.config import Settings

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("PUPPYLOG_DSN", "postgresql://alice:s3cret@db.example.com/puppylog")
    monkeypatch.setenv("PUPPYLOG_THRESHOLD", "7")
    text = _help(capsys, "run")
    for name in Settings.model_fields:
        assert f"(env PUPPYLOG_{name.upper()}; default " in text, name
    for name, default in {
        "DSN": "unset",
        "DSN_FILE": "unset",
        "THRESHOLD": "10",  # not the 7 of the environment
        "RECOVERY_THRESHOLD": "unset",
        "LOG_FILES": "/tmp/access.log",
        "ONCE": "false",
        "POLL_INTERVAL": "0.1",
        "BATCH_LINES": "20000",
        "LOG_LEVEL": "info",
    }.items():
        assert f"(env PUPPYLOG_{name}; default {default})" in text, name
    assert "s3cret" not in text and "db.example.com" not in text
    assert "puppylogd run --help" in _help(capsys)  # the top level says where they are
    migrate = _help(capsys, "migrate")
    assert "(env PUPPYLOG_DSN; default unset)" in migrate and "s3cret" not in migrate


def test_the_watch_names_a_mistyped_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PUPPYLOG_DNS must not pass silently for "no DSN configured"."""
    from puppylog_watch import cli as watch_cli

    for name in [n for n in os.environ if n.startswith("PUPPYLOG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PUPPYLOG_DNS", "postgresql://db.example.com/puppylog")
    monkeypatch.setenv("PUPPYLOG_THRESHOLD", "7")  # the daemon's: no typo
    assert watch_cli.main(["--plain", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "puppylog-watch: warning: PUPPYLOG_DNS is not a setting and is ignored "
        "(did you mean PUPPYLOG_DSN?)"
    )
    assert len(err) == 2 and err[1].startswith("puppylog-watch: error: no DSN configured")
