"""The documents a reader walks through: every relative link resolves, anchors included.

A lecturer follows README → COURSE → notebooks → GLOSSARY / FINDINGS by their links; a renamed
heading or file would break that walk silently. Anchors follow GitHub's rule: the heading in
lower case, punctuation dropped, spaces turned into hyphens.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def markdown_of(path):
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def anchors(path):
    found = set()
    fenced = False
    for line in markdown_of(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


DOCS = sorted([*ROOT.glob("*.md"), *(ROOT / "notebooks").glob("*.ipynb"),
               *(ROOT / "exercises").rglob("*.md")])


def test_slug_follows_github():
    # hand-worked from headings of FINDINGS.md and the notebooks
    assert slug(" 3a. DRO's value estimate adds variance") == "3a-dros-value-estimate-adds-variance"
    assert slug("Notebook 01") == "notebook-01"
    assert slug("1 and 2. RPO beats SFT, KTO and DRO; less toxic (reviews world)") == \
        "1-and-2-rpo-beats-sft-kto-and-dro-less-toxic-reviews-world"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(markdown_of(doc)):
        if re.match(r"[a-z]+:", target):          # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix in (".md", ".ipynb") and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)
