"""README.md and README.ko.md say the same things: each links to the other at the top, and both
name the same settings (environment variables) and the same exit codes."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

EN = REPO / "README.md"
KO = REPO / "README.ko.md"
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SETTING = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")


def settings_named(text: str) -> set[str]:
    """Every NAME in a code span such as `NAME`, `NAME=value` or `NAME` in a table cell."""
    names = set()
    for span in CODE_SPAN.findall(text):
        head = span.split("=", 1)[0].strip()
        if len(head) >= 3 and SETTING.fullmatch(head):
            names.add(head)
    return names


def exit_codes(text: str, heading: str) -> list[str]:
    """The first cell of each row of the table under the heading that contains `heading`."""
    section = text.split(heading, 1)[1]
    rows = re.findall(r"^\| *([0-9][0-9, ]*) *\|", section.split("\n#", 1)[0], re.MULTILINE)
    return [r.strip() for r in rows]


@pytest.fixture(scope="module")
def texts() -> tuple[str, str]:
    return EN.read_text(), KO.read_text()


def test_each_readme_links_to_the_other_at_the_top(texts):
    en, ko = texts
    assert "(README.ko.md)" in "\n".join(en.splitlines()[:5])
    assert "(README.md)" in "\n".join(ko.splitlines()[:5])


def test_both_readmes_name_the_same_settings(texts):
    en, ko = (settings_named(t) for t in texts)
    assert len(en) > 40, f"the English README names only {sorted(en)}"
    assert en - ko == set(), f"README.ko.md does not name {sorted(en - ko)}"
    assert ko - en == set(), f"README.md does not name {sorted(ko - en)}"


def test_both_readmes_list_the_same_exit_codes(texts):
    en, ko = texts
    codes = exit_codes(en, "### Exit codes")
    assert codes[:2] == ["0", "1"] and "130, 143" in codes, codes
    assert exit_codes(ko, "### 종료 코드") == codes


def test_both_readmes_start_with_the_same_two_commands(texts):
    en, ko = texts

    def first_block(text: str) -> list[str]:
        block = text.split("```bash\n", 1)[1].split("```", 1)[0]
        return [line.split("#", 1)[0].strip() for line in block.splitlines()]

    assert (
        first_block(en)
        == first_block(ko)
        == [
            "uv run python -m gcp_emulator demo",
            "uv run pytest",
        ]
    )
