"""The locks stay true to pyproject.toml: every dependency pinned exactly, with hashes, at a
version its range allows, and the runtime lock agreeing with the test lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ \\;]+)")


def pins(name: str) -> dict[str, str]:
    """{package: version} of requirements/<name>, every entry checked for an exact pin and a hash."""
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for entry in re.split(r"\n(?=[A-Za-z])", text):
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        match = PIN.match(entry)
        assert match, f"{name}: not an exact pin: {entry.splitlines()[0]!r}"
        assert "--hash=sha256:" in entry, f"{name}: {match[1]} has no hash"
        found[canonicalize_name(match[1])] = match[2]
    return found


def applies_here(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({**default_environment(), "extra": extra})


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("main.txt", PYPROJECT["project"]["dependencies"]),
        ("test.txt", PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]),
    ],
)
def test_every_dependency_is_locked_within_its_range(lock: str, requirements: list[str]) -> None:
    """Each dependency (and the build backend) is in the lock at a version pyproject.toml allows:
    a range changed without `scripts/lock.sh` fails here."""
    locked = pins(lock)
    for text in [*requirements, *PYPROJECT["build-system"]["requires"]]:
        requirement = Requirement(text)
        if not applies_here(requirement):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {name}: run scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {name}=={locked[name]}, outside {requirement.specifier}: run scripts/lock.sh"
        )


def test_the_runtime_lock_agrees_with_the_test_lock() -> None:
    """The image runs the versions CI tests: every package of main.txt has the same pin in test.txt."""
    main, test = pins("main.txt"), pins("test.txt")
    assert {name: (version, test.get(name)) for name, version in main.items() if test.get(name) != version} == {}
