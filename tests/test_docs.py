"""The documentation: README.md is the front door over docs/, every page has its Korean twin that
names the same settings, the pages name every setting the scripts and the agent read and every
exit code the orchestrator has, every link lands on a file (and heading) of this repository, and
no page points to a file outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent.settings import Settings
from tests.conftest import REPO

EN = REPO / "README.md"
KO = REPO / "README.ko.md"
DOCS = REPO / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SETTING = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXIT_CODES_HEADING = {"en": "## Exit codes", "ko": "## 종료 코드"}


def settings_named(text: str) -> set[str]:
    """Every NAME in a code span such as `NAME`, `NAME=value` or `NAME` in a table cell."""
    names = set()
    for span in CODE_SPAN.findall(text):
        head = span.split("=", 1)[0].strip()
        if len(head) >= 3 and SETTING.fullmatch(head):
            names.add(head)
    return names


def exit_codes(text: str, heading: str) -> list[str]:
    """The first cell of each row of the table under `heading`."""
    section = text.split(f"\n{heading}\n", 1)[1]
    rows = re.findall(r"^\| *([0-9][0-9, ]*) *\|", section.split("\n#", 1)[0], re.MULTILINE)
    return [r.strip() for r in rows]


def twins() -> list[tuple[Path, Path]]:
    return [(EN, KO)] + [(DOCS / name, DOCS / "ko" / name) for name in PAGES]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_each_readme_links_to_the_other_at_the_top():
    assert "(README.ko.md)" in "\n".join(EN.read_text().splitlines()[:5])
    assert "(README.md)" in "\n".join(KO.read_text().splitlines()[:5])


def test_the_readme_is_a_front_door_over_every_page_of_docs():
    text = EN.read_text()
    assert len(text.splitlines()) < 250, "README.md is no front door: move the reference to docs/"
    linked = {m.split("#")[0] for m in LINK.findall(text)}
    assert {f"docs/{name}" for name in PAGES} <= linked, "README.md's map misses a page"
    assert {f"docs/ko/{name}" for name in PAGES} <= set(
        m.split("#")[0] for m in LINK.findall(KO.read_text())
    ), "README.ko.md's map misses a page"
    assert len(PAGES) >= 7, PAGES


def test_every_page_of_docs_has_its_korean_twin_linked_at_the_top():
    assert sorted(p.name for p in (DOCS / "ko").glob("*.md")) == PAGES
    for en, ko in twins()[1:]:
        assert f"(ko/{en.name})" in "\n".join(en.read_text().splitlines()[:4]), en
        assert f"(../{en.name})" in "\n".join(ko.read_text().splitlines()[:4]), ko


@pytest.mark.parametrize(("en", "ko"), twins(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_twins_name_the_same_settings(en, ko):
    names_en, names_ko = settings_named(en.read_text()), settings_named(ko.read_text())
    assert names_en - names_ko == set(), f"{ko.name} does not name {sorted(names_en - names_ko)}"
    assert names_ko - names_en == set(), f"{en.name} does not name {sorted(names_ko - names_en)}"


def test_the_pages_name_every_setting_the_scripts_and_the_agent_read():
    header = (REPO / "entrypoint.sh").read_text().split("\nset -Eeuo", 1)[0]
    named = header.split("# Required:", 1)[1].split("# Exit codes:", 1)[0]
    orchestrator = set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", named))
    assert {"PROJECT_ID", "KEEP_VM", "PIN_WAIT", "CLOUD_RUN_TASK_INDEX"} <= orchestrator, named
    missing = orchestrator - settings_named((DOCS / "orchestrator.md").read_text())
    assert missing == set(), f"docs/orchestrator.md does not name {sorted(missing)}"
    boot = set(re.findall(r"^  setting ([A-Z_]+) ", (REPO / "startup.sh").read_text(), re.M))
    assert len(boot) > 8, boot
    missing = boot - settings_named((DOCS / "boot.md").read_text())
    assert missing == set(), f"docs/boot.md does not name {sorted(missing)}"
    agent = {name.upper() for name in Settings.model_fields}
    missing = agent - settings_named((DOCS / "agent.md").read_text())
    assert missing == set(), f"docs/agent.md does not name {sorted(missing)}"


def test_every_table_of_exit_codes_lists_the_codes_the_orchestrator_has():
    constants = re.findall(r"\bEX_[A-Z_]+=([0-9]+)", (REPO / "orchestrator/logging.sh").read_text())
    expected = ["0", *sorted(constants, key=int), "130, 143"]
    tables = {
        "README.md": exit_codes(EN.read_text(), EXIT_CODES_HEADING["en"]),
        "README.ko.md": exit_codes(KO.read_text(), EXIT_CODES_HEADING["ko"]),
        "docs/orchestrator.md": exit_codes(
            (DOCS / "orchestrator.md").read_text(), EXIT_CODES_HEADING["en"]
        ),
        "docs/ko/orchestrator.md": exit_codes(
            (DOCS / "ko/orchestrator.md").read_text(), EXIT_CODES_HEADING["ko"]
        ),
    }
    for where, codes in tables.items():
        assert codes == expected, (
            f"{where} lists exit codes {codes}, the orchestrator has {expected}"
        )


def test_every_link_lands_on_a_file_and_heading_of_this_repository():
    pages = [EN, KO, *DOCS.glob("*.md"), *(DOCS / "ko").glob("*.md")]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL: public sources, not files of ours
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(REPO) or not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == [], "links that land nowhere: " + "; ".join(broken)


def test_the_anchor_rule_is_githubs():
    assert slug("How the trust works") == "how-the-trust-works"
    assert slug("Measured (bench/flow.py)") == "measured-benchflowpy"
    assert slug("신뢰는 이렇게 작동합니다") == "신뢰는-이렇게-작동합니다"


def test_no_file_of_the_project_points_to_a_file_outside_it():
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outside = re.compile(r"GCP_REFERENCE|DESIGN\.md|STYLE\.md|\.\./shared|shared/seed")
    found = []
    for name in files:
        path = REPO / name
        if name.endswith(".lock") or not path.is_file() or path == Path(__file__):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [
            f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)
        ]
    assert found == [], f"pointers to files the project's users do not have: {found}"


def test_both_readmes_start_with_the_same_two_commands():
    def first_block(text: str) -> list[str]:
        block = text.split("```bash\n", 1)[1].split("```", 1)[0]
        return [line.split("#", 1)[0].strip() for line in block.splitlines()]

    assert (
        first_block(EN.read_text())
        == first_block(KO.read_text())
        == [
            "uv run python -m gcp_emulator demo",
            "uv run pytest",
        ]
    )
