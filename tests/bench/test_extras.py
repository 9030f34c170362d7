"""`python -m bench`: every command's --help works without the `bench` extra, and a
command that needs it names the missing packages and the extra before doing anything."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.__main__ import COMMANDS, EXTRA, EXTRA_MODULES, NEEDS

ROOT = Path(__file__).resolve().parents[2]
# The extra's packages are made unimportable, as in an install without it.
WITHOUT_EXTRA = (
    "import runpy, sys\n"
    f"for name in {sorted(EXTRA_MODULES)!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['bench', *sys.argv[1:]]\n"
    "runpy.run_module('bench', run_name='__main__')\n"
)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_works_without_the_extra(command: str) -> None:
    result = _bench(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m bench {command}")


@pytest.mark.parametrize("command", sorted(NEEDS))
def test_a_command_needing_the_extra_names_it(command: str) -> None:
    result = _bench(command)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"pip install 'trio-mirror[{EXTRA}]'" in result.stderr
    assert all(module in result.stderr for module in NEEDS[command])
    assert result.stdout == ""  # nothing started


def test_the_extra_brings_what_the_commands_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra in (EXTRA, "dev"):
        names = {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras[extra]}
        assert names >= EXTRA_MODULES, (extra, EXTRA_MODULES - names)
    assert not EXTRA_MODULES & {req.split(">")[0] for req in project["dependencies"]}
