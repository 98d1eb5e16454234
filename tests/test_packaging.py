"""Packaging: pyproject.toml gives version ranges (the package joins other environments), and
requirements.lock the exact pins inside them that the Makefile, environment.yml and CI install."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    """pyproject's dependencies and every optional extra's, parsed."""
    p = project()
    extras = [d for extra in p["optional-dependencies"].values() for d in extra]
    return [Requirement(d) for d in p["dependencies"] + extras]


def lock() -> dict[str, str]:
    """requirements.lock as {canonical name: exact version}; a line not ``name==version`` fails here."""
    pins = {}
    for i, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s=;]+)", line.strip())
        assert m, f"requirements.lock:{i}: {line!r} is not an exact name==version pin"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def test_python_3_11_and_later_are_allowed():
    spec = SpecifierSet(project()["requires-python"])
    assert all(v in spec for v in ("3.11.7", "3.12.1", "3.13.0", "3.14.0")), spec
    assert "3.10.13" not in spec


def test_dependencies_are_ranges_with_a_lower_and_an_upper_bound():
    for req in requirements():
        ops = {s.operator for s in req.specifier}
        assert ops == {">=", "<"}, f"{req}: expected a range such as 'name>=X.Y,<X+1', not an exact pin"


def test_every_dependency_is_pinned_in_the_lock_inside_its_range():
    pins = lock()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not pinned in requirements.lock"
        inside = req.specifier.contains(pins[name], prereleases=True)
        assert inside, f"requirements.lock pins {name}=={pins[name]} outside {req}"


def test_the_lock_pins_no_local_build_and_not_the_project_itself():
    pins = lock()
    assert "caft-tl" not in pins
    local = [f"{n}=={v}" for n, v in pins.items() if "+" in v]
    assert not local, f"local versions (e.g. +cpu) do not install from PyPI: {local}"


def test_make_environment_yml_and_ci_install_from_the_lock():
    assert '-m pip install -q -c requirements.lock -e ".[dev]"' in (ROOT / "Makefile").read_text()
    pip = [
        d
        for entry in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
        if isinstance(entry, dict)
        for d in entry["pip"]
    ]
    assert pip == ["-c requirements.lock", "-e .[dev]"], pip
    ci = (ROOT / ".ci/run").read_text()
    assert "make test\n" in ci  # make test installs through the Makefile's rule
    assert 'make test-fast PYTHON="$second" VENV=' in ci  # and the fast lane again on a second Python
