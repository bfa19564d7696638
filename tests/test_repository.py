"""The repository stands alone: its text points at nothing outside it (design notes beside the
checkout, issue numbers a reader does not have), and every relative link in README.md and
docs/ resolves to a file of the repository."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"\.\./shared|\b(?:DESIGN|KERNEL|STYLE)\.md\b|\b[Ii]ssue[- ]?#?\d+")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".c", ".h", ".sh", ".Dockerfile", ".cfg", ".txt", ""}


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    files = [REPO / f for f in out]
    return [f for f in files if f.is_file() and (f.suffix in TEXT_SUFFIXES or f.name == "Makefile")
            and f.stat().st_size < 2_000_000]


def test_nothing_points_outside_the_repository():
    found = []
    for path in tracked_text_files():
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_relative_links_in_the_docs_resolve():
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, "\n".join(broken)
