"""README.md points only at what a clone holds: its links and the repository paths it names exist inside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _inside(path: str) -> bool:
    target = (ROOT / path).resolve()
    return target.is_relative_to(ROOT) and target.exists()


def test_links_point_inside_the_repository():
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", README) if not re.match(r"https?://", t)]
    assert links, "the README links benchmarks/RESULTS.md at least"
    assert [t for t in links if not _inside(t.split("#")[0])] == []
    assert "../" not in README, "a path outside the repository"


def test_repository_paths_it_names_exist():
    # `configs/voc/resnet18_v{1,2,3}.yaml` is a pattern, not a path
    named = re.findall(r"(?<![\w/.])((?:configs|benchmarks|tests|visionbench)/[\w./=-]+)(?![\w{])", README)
    assert len(named) > 20
    assert [p for p in named if not _inside(p.rstrip("."))] == []
