"""Keep the README honest: its configuration reference must match the settings model."""

from __future__ import annotations

import re
from pathlib import Path

from puppylogd.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _config_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\| `(\w+)` \| `(PUPPYLOG_\w+)` \| (.+?) \| (.+) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def test_every_setting_is_documented_once_with_its_variable() -> None:
    """Each Settings field has a README row naming its environment variable; no extra rows."""
    rows = _config_rows()
    assert set(rows) == set(Settings.model_fields)
    for name, (env, _default) in rows.items():
        assert env == f"PUPPYLOG_{name.upper()}"


def test_documented_defaults_match_the_model() -> None:
    """Plain defaults in the README table equal the model's defaults."""
    rows = _config_rows()
    for name, info in Settings.model_fields.items():
        shown = rows[name][1].strip("`")
        if info.default_factory is not None:
            value = info.get_default(call_default_factory=True)
            if isinstance(value, list):  # shown as the environment variable takes it
                assert shown == ",".join(map(str, value)), name
            continue  # the others depend on the machine (host, state_dir): said in words
        if info.default is None:
            assert shown == "unset", name
        elif isinstance(info.default, bool):
            assert shown == str(info.default).lower(), name
        elif isinstance(info.default, float) and info.default.is_integer():
            assert shown in (str(info.default), str(int(info.default))), name
        else:
            assert shown == str(info.default), name


def test_readme_opens_with_the_two_commands() -> None:
    """The first two shell blocks are the run command and the test command."""
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith("puppylogd demo")
    assert blocks[1].endswith("python -m pytest")
    assert README.index(blocks[1]) < README.index("## ")


def test_design_notes_list_every_module() -> None:
    """docs/design.md's module table names every module of the daemon."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    for module in sorted((ROOT / "puppylogd").glob("*.py")):
        if module.stem not in ("__init__", "__main__"):
            assert f"| `puppylogd/{module.name}` |" in design, module.name
