"""The docs name only things that exist: every repository path, `mcrlab` sub-command and `make` target named
in README.md, jobs/README.md and docs/*.md.

Paths are collected from code (inline and fenced) and from relative Markdown links; a path counts when its
first folder is one of the repository's top-level folders (so artifact names such as ``config.yaml`` and
outputs under ``runs/`` are not mistaken for repository files). Placeholders (``<id>``, ``...``, globs) are
skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcrlab.cli.app import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "jobs" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"runs"}
GENERATED = ("runs/",)  # written by the commands the docs show
# named in order to say it must not exist ("a platform/__init__.py would shadow the standard library's module")
ABSENT_ON_PURPOSE = {"platform/__init__.py"}

CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATH = re.compile(r"(?<![\w/.:-])((?:\./)?[A-Za-z0-9_][\w.+-]*/[\w./+-]*[\w+-])")


def _code(text: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in CODE.finditer(text)]


def _named_paths(doc: Path) -> set[str]:
    text = doc.read_text()
    found = set()
    for chunk in _code(text):
        for m in PATH.finditer(chunk):
            path = m.group(1).removeprefix("./")
            glued = chunk[m.end():m.end() + 1]  # search_spaces/ablation_*.yaml stops before the '*'
            if (path.split("/")[0] in TOP and glued not in ("*", "<", "{") and "..." not in path
                    and not any(c in path for c in "<>*{}")):
                found.add(path)
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # not http:, mailto:
            found.add(str((doc.parent / target).resolve().relative_to(ROOT)))
    return {p for p in found if not p.startswith(GENERATED) and p not in ABSENT_ON_PURPOSE}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_named_repository_path_exists(doc):
    missing = sorted(p for p in _named_paths(doc) if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def _subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_shown_command_exists(doc):
    known = _subcommands()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    bad = []
    for chunk in _code(doc.read_text()):
        for line in chunk.splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            m = re.match(r"mcrlab\s+([a-z][\w-]*)", line)
            if m and m.group(1) not in known:
                bad.append(line)
            m = re.match(r"make\s+([\w-]+)", line)
            if m and m.group(1) not in targets:
                bad.append(line)
    assert not bad, f"{doc.relative_to(ROOT)} shows commands that do not exist: {bad}"


def test_the_collector_finds_paths_and_commands():
    """Guards the collector itself: it must see the paths and commands the README is known to show."""
    paths = _named_paths(ROOT / "README.md")
    assert "search_spaces/default.yaml" in paths and "jobs/README.md" in paths
    lines = [ln for chunk in _code((ROOT / "README.md").read_text()) for ln in chunk.splitlines()]
    assert any(ln.strip().startswith("mcrlab sweep") for ln in lines)
