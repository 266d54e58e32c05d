"""Run every README shell block marked ``<!-- runnable -->``, so the docs cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"<!-- runnable -->\n```sh\n(.*?)\n```", README, re.S)
BIN = str(Path(sys.executable).parent) + "/"


def test_there_are_runnable_blocks() -> None:
    """The marker is in use (a renamed marker would silently test nothing)."""
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_runnable_block(block: str, db_dsn: str) -> None:
    """The block succeeds against a fresh database, using this interpreter's scripts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
    env["PUPPYLOG_DSN"] = db_dsn
    script = block.replace(".venv/bin/", BIN)
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
