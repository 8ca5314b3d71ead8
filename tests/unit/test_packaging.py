"""The declared dependency floors are the versions the lowest-versions run tests.

``tox -e lowest`` (and CI's second run) installs with ``constraints-lowest.txt``: each runtime
dependency pinned to its declared minimum. A floor raised in one file and not the other would
test versions users cannot get, or promise versions nobody tested.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors: dict[str, str] = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # one lower bound each, nothing else
        assert specifier.operator == ">=", f"{line}: declare a floor (>=), not {specifier}"
        floors[requirement.name.lower()] = specifier.version
    return floors


def _pins(file: str = "constraints-lowest.txt") -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / file).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_every_runtime_floor_is_pinned_in_the_lowest_versions_run() -> None:
    pins = _pins()
    assert {name: pins.get(name) for name in _floors()} == _floors()


def test_the_lowest_versions_run_pins_nothing_undeclared() -> None:
    # psycopg-binary rides with psycopg (the binary extra) at the same version; the test
    # environment's own pins (constraints.txt: the CPU torch) apply as they are.
    allowed = {**_floors(), "psycopg-binary": _floors()["psycopg"], **_pins("constraints.txt")}
    assert {name: allowed.get(name) for name in _pins()} == _pins()
