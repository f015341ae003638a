"""The README's "Using taskbalance with ..." section: every Python block runs, in order, in
one namespace (so the snippets cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using taskbalance with"


def snippets() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


def test_the_section_has_snippets() -> None:
    assert len(snippets()) >= 4


def test_every_snippet_runs() -> None:
    import importlib.util

    namespace: dict[str, object] = {}
    for number, code in enumerate(snippets(), start=1):
        extras = [name for name in ("lightning", "transformers") if f"import {name}" in code]
        if any(importlib.util.find_spec(name) is None for name in extras):
            continue  # an optional extra that is not installed here (CI installs them)
        exec(compile(code, f"README snippet {number}", "exec"), namespace)
