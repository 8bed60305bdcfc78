"""Committed records and tables are portable: no machine path in anything under results/ or leaderboards/."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r'"(/(?:work|tmp|root|home|Users|mnt|scratch|data)/[^"]*)"')


def test_no_absolute_paths_in_committed_files():
    found = []
    for d in ("results", "leaderboards"):
        for p in (REPO / d).rglob("*"):
            if p.is_file() and p.suffix in (".json", ".jsonl", ".csv", ".md", ".yaml"):
                found += [f"{p.relative_to(REPO)}: {m}" for m in ABSOLUTE.findall(p.read_text(errors="replace"))]
    assert not found, found[:5]
