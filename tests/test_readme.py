"""The README stays true to the code: every setting is documented, and the setup commands
that CI and newcomers rely on are there as written."""

from __future__ import annotations

import re
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


ROOT = Path(__file__).resolve().parents[1]
README_LIMIT_BYTES = 20_000
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_fits_in_a_few_screens() -> None:
    """The README stays under 20 KB: the manual lives in docs/."""
    size = len(README.encode("utf-8"))
    assert size < README_LIMIT_BYTES, f"README.md is {size:,} bytes; move sections to docs/"


def test_relative_links_in_the_docs_point_at_files_that_exist() -> None:
    """Every relative link in README.md, BENCHMARKS.md and docs/*.md names a file in the repo."""
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for link in _LINK.findall(page.read_text(encoding="utf-8")):
            path = link.partition("#")[0]
            if link.startswith(("http://", "https://", "mailto:")) or not path:
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {link}")
    assert not broken, f"broken links: {broken}"
