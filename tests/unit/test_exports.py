"""The front door: mqctl/__init__.py exports exactly its public names, in a sorted __all__."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import mqctl

INIT = Path(mqctl.__file__)


def _names_bound_in_init() -> set[str]:
    """Public names that mqctl/__init__.py imports or assigns at module level."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") or n == "__version__"} - {"annotations"}


def test_every_name_in_all_exists() -> None:
    """Each name listed in mqctl.__all__ is an attribute of mqctl."""
    missing = [name for name in mqctl.__all__ if not hasattr(mqctl, name)]
    assert missing == []


def test_all_is_sorted_without_duplicates() -> None:
    """mqctl.__all__ is sorted and names each export once."""
    assert mqctl.__all__ == sorted(set(mqctl.__all__))


def test_every_public_import_is_exported() -> None:
    """Every public name imported in mqctl/__init__.py is listed in __all__, and nothing else is."""
    assert _names_bound_in_init() == set(mqctl.__all__)


def test_exported_classes_and_functions_say_where_they_live() -> None:
    """Every exported class and function comes from inside mqctl (no re-exported third-party names)."""
    for name in mqctl.__all__:
        member = getattr(mqctl, name)
        module = getattr(member, "__module__", None)
        if module is not None and callable(member):
            assert module.startswith("mqctl."), f"{name} comes from {module}"


def test_errors_share_one_root() -> None:
    """Every exported exception derives from mqctl.MQError."""
    errors = [getattr(mqctl, n) for n in mqctl.__all__ if isinstance(getattr(mqctl, n), type)]
    errors = [e for e in errors if issubclass(e, BaseException)]
    assert errors
    assert all(issubclass(e, mqctl.MQError) for e in errors)


def test_version_matches_the_installed_distribution() -> None:
    """mqctl.__version__ is the version the package was installed as."""
    assert mqctl.__version__ == importlib.metadata.version("mqctl")
