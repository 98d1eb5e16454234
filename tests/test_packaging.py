"""pyproject.toml and environment.yml pin the same stack."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_every_pin_agrees_between_pyproject_and_environment_yml():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + [d for extra in project.get("optional-dependencies", {}).values() for d in extra]
    pyproject = {_name(d): d.replace(" ", "") for d in pins}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = [d for entry in env if isinstance(entry, dict) for d in entry.get("pip", []) if not d.startswith("-e")]
    conda = {_name(d): d.replace(" ", "") for d in pip}
    assert pyproject == conda, {k: (pyproject.get(k), conda.get(k)) for k in set(pyproject) ^ set(conda) | {k for k in pyproject if pyproject[k] != conda.get(k)}}
    assert all("==" in d for d in pyproject.values()), "every dependency is pinned exactly"
