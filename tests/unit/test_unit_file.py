"""Check packaging/systemd: the unit's required settings, and systemd's own verifiers.

The systemd tools (>= 250) are optional on developer machines (the tests skip with a reason)
but required under CI (``CI=true``, which .ci/run sets), where a missing tool fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from puppylogd.config import Settings

PACKAGING = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNIT = PACKAGING / "puppylogd.service"
SYSUSERS = PACKAGING / "puppylog.sysusers"
ENV_EXAMPLE = PACKAGING / "puppylogd.env.example"

# Highest acceptable `systemd-analyze security` exposure, in tenths (20 = 2.0, "OK").
MAX_EXPOSURE_TENTHS = 20

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0027",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values (keys may repeat in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        assert not line.endswith("\\"), "continuation lines are not used in this unit"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _single(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"{section}/{key} is missing"
    assert len(values) == 1, f"{section}/{key} is set {len(values)} times"
    return values[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("TimeoutStopSec", "30"),
        ("User", "puppylog"),
        ("Group", "puppylog"),
        ("SupplementaryGroups", "adm"),
        ("StateDirectory", "puppylog"),
        ("StateDirectoryMode", "0750"),
        ("ConfigurationDirectory", "puppylog"),
        ("EnvironmentFile", "-/etc/puppylog/puppylogd.env"),
        ("ExecStart", "/usr/bin/puppylogd"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ],
)
def test_service_settings(unit: dict[str, dict[str, list[str]]], key: str, value: str) -> None:
    assert _single(unit, "Service", key) == value


def test_restart_skips_what_a_restart_cannot_fix(unit: dict[str, dict[str, list[str]]]) -> None:
    """A bad setting (2) and a schema another build made (3) are not retried."""
    from puppylogd.cli import EXIT_SCHEMA

    statuses = _single(unit, "Service", "RestartPreventExitStatus").split()
    assert sorted(statuses) == sorted({"2", str(EXIT_SCHEMA)})


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening(unit: dict[str, dict[str, list[str]]], key: str, value: str) -> None:
    assert _single(unit, "Service", key) == value


def test_a_start_that_keeps_failing_ends_failed(unit: dict[str, dict[str, list[str]]]) -> None:
    """A daemon that exits at once (a refused DSN) stops restarting; a watchdog restart does not."""
    interval = float(_single(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(_single(unit, "Unit", "StartLimitBurst"))
    restart = float(_single(unit, "Service", "RestartSec"))
    watchdog = float(_single(unit, "Service", "WatchdogSec"))
    # Each failed start costs RestartSec and about a second to start and fail.
    assert burst * (restart + 1) <= interval
    # Restarts by the watchdog are at least WatchdogSec apart: burst of them never fit.
    assert (burst - 1) * watchdog >= interval


def test_no_private_tmp(unit: dict[str, dict[str, list[str]]]) -> None:
    # The default log file is /tmp/access.log; a private /tmp would hide it.
    for section in unit.values():
        assert "PrivateTmp" not in section


def test_logs_go_to_the_journal_with_priorities(unit: dict[str, dict[str, list[str]]]) -> None:
    assert _single(unit, "Service", "StandardOutput") == "journal"
    assert _single(unit, "Service", "SyslogLevelPrefix") == "yes"


def test_install_section(unit: dict[str, dict[str, list[str]]]) -> None:
    assert _single(unit, "Install", "WantedBy") == "multi-user.target"


def test_env_example_names_only_known_settings() -> None:
    known = {f"PUPPYLOG_{name.upper()}" for name in Settings.model_fields}
    names = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        setting = line.lstrip("#").strip()
        if setting.startswith("PUPPYLOG_") and "=" in setting:
            names.add(setting.partition("=")[0])
    assert names, "the example sets nothing"
    assert names <= known, f"unknown settings: {sorted(names - known)}"


def _unavailable(message: str) -> NoReturn:
    """Skip the test on a developer machine; fail it under CI, where the tools are required."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; required under CI")
    pytest.skip(message)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(f"{name} not installed (Debian: apt-get install systemd)")
    return path


def _tool_env() -> dict[str, str]:
    return {
        **os.environ,
        "SYSTEMD_LOG_LEVEL": "warning",
        "SYSTEMD_LOG_COLOR": "0",
        "SYSTEMD_PAGER": "",
        "LC_ALL": "C",
    }


def _verifiable_copy(tmp_path: Path) -> Path:
    """Copy the unit so systemd can load it here: missing Exec* binaries become python.

    ``systemd-analyze verify`` rejects a unit whose commands are not executable, and
    /usr/bin/puppylogd exists only once the package is installed.
    """
    lines = []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        command, _, args = value.lstrip("-@:+!").partition(" ")
        if sep and key.startswith("Exec") and command and not os.access(command, os.X_OK):
            lines.append(f"{key}={sys.executable} {args}".rstrip())
        else:
            lines.append(line)
    copy = tmp_path / UNIT.name
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=_tool_env(), timeout=60, check=False
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    copy = _verifiable_copy(tmp_path)
    # --recursive-errors=no: judge only our unit, not whatever the host's units look like.
    base = [analyze, "verify", "--man=no"]
    result = _run([*base, "--recursive-errors=no", str(copy)])
    if result.returncode != 0 and "recursive-errors" in result.stderr:
        result = _run([*base, str(copy)])  # systemd < 250 lacks the option
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if copy.name in line]
    assert not ours, "systemd-analyze verify complained:\n" + "\n".join(ours)
    assert result.returncode == 0, output


def test_security_exposure(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    copy = _verifiable_copy(tmp_path)
    result = _run(
        [
            analyze,
            "security",
            "--no-pager",
            "--offline=yes",
            f"--threshold={MAX_EXPOSURE_TENTHS}",
            str(copy),
        ]
    )
    output = result.stdout + result.stderr
    if "offline" in result.stderr and "unrecognized option" in result.stderr:
        _unavailable("systemd-analyze security --offline needs systemd >= 250")
    overall = [line for line in output.splitlines() if "Overall exposure level" in line]
    assert overall, output
    assert result.returncode == 0, f"exposure above {MAX_EXPOSURE_TENTHS / 10}: {overall[0]}"


def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = _run([sysusers, f"--root={tmp_path}", str(SYSUSERS)])
    assert result.returncode == 0, result.stdout + result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    entry = next(line for line in passwd if line.startswith("puppylog:"))
    fields = entry.split(":")
    assert fields[5] == "/var/lib/puppylog"
    groups = (tmp_path / "etc" / "group").read_text(encoding="utf-8")
    assert "\npuppylog:" in "\n" + groups
    assert "\nadm:" in "\n" + groups


PACKAGING_README = PACKAGING / "README.md"
# Settings the packaging README names as something to put in a drop-in, not in the unit.
DROP_IN_EXAMPLES = {("ProtectHome", "read-only"), ("SupplementaryGroups", "nginx")}


def test_packaging_readme_matches_the_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    """Every ``Key=value`` the packaging README states is what the unit sets; files exist."""
    text = PACKAGING_README.read_text(encoding="utf-8")
    service = unit["Service"]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks show drop-ins
    not_used = re.search(r"Not used, on purpose:(.*?)(?:\n- |\n#|\Z)", prose, re.S)
    assert not_used is not None
    absent = set(re.findall(r"`(\w+)=", not_used.group(1)))
    assert absent >= {"PrivateTmp", "PrivateNetwork", "IPAddressDeny", "PrivateUsers"}
    for key in absent:
        assert key not in service, f"README says {key}= is not used, but the unit sets it"
    # Unit settings are CamelCase; READY=1 and friends are sd_notify messages.
    claims = re.findall(r"`([A-Z][a-z]\w*)=([^`]+)`", prose.replace(not_used.group(1), ""))
    assert len(claims) >= 10, claims
    for key, value in claims:
        if (key, value) in DROP_IN_EXAMPLES:
            continue
        values = service.get(key, []) + unit["Unit"].get(key, [])
        assert value in values, f"README says {key}={value}; the unit: {values}"
    for name in re.findall(r"^\| `([^`]+)` \|", text, re.M):
        assert (PACKAGING / name).is_file(), f"README lists {name}, which is not in {PACKAGING}"
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert f"`{key}=`" in text and _single(unit, "Service", key) == "puppylog"
