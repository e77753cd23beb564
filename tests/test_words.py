"""What users read speaks of this project only: no section numbers of a method summary they do not
have, no sibling folders of the machine the project was built on. The docs, the shipped configs,
the format spec, the study plans and reports, and every command's --help are scanned (run
records under docs/study/ are kept as they were written)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"§|method digest|method-digest|\.\./shared|\bleases?\b")


def _texts() -> list[Path]:
    return [REPO / "README.md", REPO / "shards" / "FORMAT.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "docs" / "study").glob("*.md")), *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", _texts(), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_and_configs_name_nothing_outside_the_project(path):
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("module", ["trainer", "builder", "sharing", "fitting", "demo", "study"])
def test_help_texts_name_nothing_outside_the_project(module):
    import importlib

    main = importlib.import_module(f"actgen.{module}.cli").main
    texts = [CliRunner().invoke(main, ["--help"]).output]
    for name in getattr(main, "commands", {}):
        texts.append(CliRunner().invoke(main, [name, "--help"]).output)
    hits = [t for t in texts if FORBIDDEN.search(t)]
    assert not hits and all(texts), hits
