"""The README and the documentation site cannot rot.

* Every ```python block of the README and of every page under ``docs/`` runs, in order, one
  namespace per page, in a scratch directory (blocks that import an optional extra that is
  not installed are skipped; CI installs them all).
* Every ``taskbalance ...`` command in a ```bash block parses with the real CLI parser, every
  ``make X`` names a Makefile target and every ``python benchmarks/X.py`` script exists.
* The README's method table is exactly the one generated from the method classes.
* Every ``<!-- generated: KEY -->`` marker names a generator (``make docs`` builds the site in
  strict mode in CI; this check is the fast part of it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from taskbalance.cli import build_parser
from taskbalance.methods.catalog import catalog, markdown_table

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
OPTIONAL = ("lightning", "transformers", "matplotlib", "sklearn")


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.DOTALL)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_there_are_pages_and_snippets() -> None:
    assert len(PAGES) >= 12
    assert sum(len(blocks(page, "python")) for page in PAGES) >= 10


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=page_id)
def test_every_python_block_runs(page: Path, tmp_path: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for number, code in enumerate(blocks(page, "python"), start=1):
            missing = [
                name
                for name in OPTIONAL
                if re.search(rf"^\s*(from|import) {name}\b", code, flags=re.MULTILINE)
                and importlib.util.find_spec(name) is None
            ]
            if missing:
                continue  # an optional extra that is not installed here (CI installs them)
            exec(compile(code, f"{page_id(page)} block {number}", "exec"), namespace)
    finally:
        os.chdir(cwd)


def shell_commands(page: Path) -> list[list[str]]:
    commands = []
    for block in blocks(page, "bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")], ids=page_id)
def test_every_documented_command_exists(page: Path) -> None:
    parser = build_parser()
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for words in shell_commands(page):
        if "taskbalance" in words:  # also after torchrun ... --no-python
            arguments = words[words.index("taskbalance") + 1 :]
            try:
                parser.parse_args(arguments)
            except SystemExit as error:
                pytest.fail(f"{page_id(page)}: `{' '.join(words)}` does not parse ({error})")
        elif words[0] == "make":
            assert set(words[1:]) <= targets, f"{page_id(page)}: unknown make target in {words}"
        elif words[0] == "python" and words[1].startswith("benchmarks/"):
            assert (ROOT / words[1]).is_file(), f"{page_id(page)}: no script {words[1]}"


def test_readme_method_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: markdown_table() from the method classes"
    assert len(catalog()) == len(re.findall(r"^\| `[a-z_]+` \|", readme, flags=re.MULTILINE))


def test_every_method_names_a_paper_or_says_it_is_a_heuristic() -> None:
    for card in catalog():
        assert card.reference, card.name
        assert card.scale, card.name
        assert "seed document" not in card.reference, card.name


def test_every_generated_marker_has_a_generator() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for page in PAGES[1:]:
        for key in re.findall(r"<!-- generated: (\S+) -->", page.read_text()):
            if key.endswith(".md"):
                assert (ROOT / "benchmarks" / "results" / key).is_file(), (page, key)
            else:
                assert key in tables.GENERATORS or key == "method-table", (page, key)
                if key in tables.GENERATORS:
                    assert "|" in tables.GENERATORS[key]()
