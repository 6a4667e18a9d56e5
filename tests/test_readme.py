"""The README stays true to the code: every setting is documented, and the setup commands
that CI and newcomers rely on are there as written."""

from __future__ import annotations

from pathlib import Path

from mqctl.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_documents_every_setting() -> None:
    """Each Settings field's MQCTL_* variable appears in the README's configuration."""
    missing = [f"MQCTL_{name.upper()}" for name in Settings.model_fields if f"`MQCTL_{name.upper()}`" not in README]
    assert not missing, f"add these to the README's Configuration table: {missing}"


TEST_COMMAND = (
    "pip install -r requirements/test.txt && pip install --no-deps --no-build-isolation -e . && python3 -m pytest -q"
)


def test_readme_keeps_the_two_setup_commands() -> None:
    """The two setup commands are in the README exactly, and .ci/run runs the second as written."""
    assert "pip install -e . && mqctl up\n" in README
    assert f"\n{TEST_COMMAND}\n" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert f"  {TEST_COMMAND}\n" in ci
