"""The documentation stays true to the code: the configuration page is generated from the
settings' declarations, and every relative link in the README and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ringcomm import config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_configuration_page_is_generated_from_the_declarations() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config.markdown(), (
        "docs/configuration.md is stale: run "
        "`python -m ringcomm configuration > docs/configuration.md`"
    )


def test_every_setting_is_documented_once() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    declared = [s.variable for s in (*config.settings(), *config.WORLD_SETTINGS)]
    assert len(declared) == len(set(declared))
    for variable in declared:
        assert page.count(f"| `{variable}` |") == 1, variable


def test_no_module_reads_ringcomm_variables_itself() -> None:
    """config.py is the only reader of RINGCOMM_* (the launcher only writes them)."""
    readers = []
    pattern = re.compile(r"environ(\.get)?[\[(]\s*[\"']RINGCOMM_")
    for path in (ROOT / "ringcomm").rglob("*.py"):
        if path.name != "config.py" and pattern.search(path.read_text()):
            readers.append(str(path.relative_to(ROOT)))
    assert not readers


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    missing = []
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        if not (page.parent / target).exists():
            missing.append(target)
    assert not missing, f"{page.name} links to missing files: {missing}"
