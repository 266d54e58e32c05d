"""The daemon's pure decisions: how many connections its files may use."""

from __future__ import annotations

import pytest

from puppylogd.daemon import DaemonError, connections_per_file, embedded_max_connections
from puppylogd.db import ConnectionBudget

LIMIT = "role web1 has CONNECTION LIMIT 11"


def test_the_live_daemon_needs_one_connection_per_file() -> None:
    assert connections_per_file(10, False, ConnectionBudget(10, 10, LIMIT)) == 1
    # Sessions of others hold connections now: start anyway (those streams retry).
    assert connections_per_file(10, False, ConnectionBudget(10, 3, LIMIT)) == 1
    with pytest.raises(DaemonError) as err:
        connections_per_file(11, False, ConnectionBudget(10, 10, LIMIT))
    message = str(err.value)
    assert "11 log files need 11 database connections" in message
    assert "at most 10 more" in message and LIMIT in message
    assert "split the files over several daemons" in message


def test_once_takes_two_connections_per_file_when_free_else_one() -> None:
    assert connections_per_file(5, True, ConnectionBudget(50, 10, LIMIT)) == 2
    assert connections_per_file(5, True, ConnectionBudget(50, 9, LIMIT)) == 1
    assert connections_per_file(5, True, ConnectionBudget(5, 5, LIMIT)) == 1
    with pytest.raises(DaemonError, match="at most 4 more"):
        connections_per_file(5, True, ConnectionBudget(4, 4, LIMIT))
    # Possible in principle, but not now: --once would fail half-way, so it refuses at once.
    with pytest.raises(DaemonError, match="only 4 are free now"):
        connections_per_file(5, True, ConnectionBudget(50, 4, LIMIT))


def test_the_embedded_server_has_room_for_the_files_and_a_once_beside_them() -> None:
    assert embedded_max_connections(1) == 100  # PostgreSQL's default stays the floor
    for files in (30, 100, 500):
        room = embedded_max_connections(files)
        # The daemon (a connection per file and its own) and --once over the same files.
        assert room >= (files + 1) + (2 * files + 1)
