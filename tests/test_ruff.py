"""The code is formatted and linted by ruff with pyproject.toml's settings (line length 110)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")  # the dev extra installs it beside this Python


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_finds_nothing_to_change(command):
    assert RUFF.exists(), f"no {RUFF}; install the dev extra: pip install -c requirements.lock -e '.[dev]'"
    out = subprocess.run([str(RUFF), *command, "."], cwd=ROOT, capture_output=True, text=True)
    report = (out.stdout + out.stderr).strip().splitlines()
    last = "\n".join(report[-15:])
    assert out.returncode == 0, f"ruff {' '.join(command)}: {len(report)} lines, the last:\n{last}"


def test_ruff_settings_are_the_projects():
    import tomllib

    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["line-length"] == 110
    assert {"E", "F", "I", "B"} <= set(ruff["lint"]["select"])
    hooks = (ROOT / ".pre-commit-config.yaml").read_text()
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = next(line for line in lock if line.startswith("ruff=="))
    assert f"rev: v{pinned.split('==')[1]}" in hooks and "ruff-check" in hooks and "ruff-format" in hooks
