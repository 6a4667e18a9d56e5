"""The CLI's runner: uvloop when it imports, asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mqctl.console import run


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_when_it_imports() -> None:
    """With uvloop installed (uvicorn[standard] brings it), a command's coroutine runs on it."""
    pytest.importorskip("uvloop")
    assert run(loop_module()).startswith("uvloop")


def test_run_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where uvloop does not import, the standard event loop runs the coroutine."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert run(loop_module()).startswith("asyncio")
