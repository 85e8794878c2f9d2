"""The documentation stays true to the code: generated config reference, parseable example configs, links that
resolve, and nothing that cites a file outside this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_configuration_reference_is_up_to_date():
    from lerobot_policy_pi_rl.config_reference import generate

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == generate(), (
        "docs/configuration.md is stale: run `python -m lerobot_policy_pi_rl.config_reference > docs/configuration.md`"
    )


def test_reference_documents_every_pi_rl_field():
    from lerobot_policy_pi_rl.config_reference import generate

    text = generate()
    for needle in ("`policy.variant.noise_level`", "`policy.variant.min_std`", "`algorithm.clip_high`",
                   "`algorithm.staleness`", "`policy.backbone.pretrained_path`", "`num_updates`"):
        assert needle in text, needle


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_parses(path):
    from lerobot_policy_pi_rl.runtime.cli import register_plugin
    from lerobot_policy_pi_rl.runtime.config import parse_config

    register_plugin()
    cfg = parse_config([f"--config_path={path}"])
    assert cfg.policy.type == "pi_rl" and cfg.algorithm.type == "pi_rl"
    assert cfg.policy.n_action_steps <= cfg.policy.chunk_size


def test_docs_mention_only_existing_commands():
    import tomllib

    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    import re

    for command in set(re.findall(r"\blerobot-pi-rl-[a-z-]+", docs)):
        assert command in scripts, f"docs mention {command}, which pyproject.toml does not install"


# ---------------------------------------------------------------------------------------------------------------
# The repository stands alone
# ---------------------------------------------------------------------------------------------------------------

# Design notes that lived beside the repository while it was written, and numbered-section citations of them.
OUTSIDE_CITATION = re.compile(r"\b(?:ALGORITHM|LEROBOT|STYLE)\.md\b|shared[/\\]design|\u00a7")
TEXT_SUFFIXES = {".py", ".md", ".json", ".toml", ".yaml", ".yml", ".txt", ".cfg"}


def repository_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("src", "docs", "examples", "tests", "bench"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    return [p for p in files if p.is_file()]


def test_nothing_cites_a_file_outside_the_repository():
    files = repository_text_files()
    assert any(p.parts[-2:] == ("docs", "reference.md") for p in files)  # the scan sees the docs
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_CITATION.search(line)
    ]
    assert not hits, "cites a file users of this repository do not have (put the facts in docs/):\n" + "\n".join(hits)


MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of the headings outside code blocks: lower case, punctuation dropped, spaces -> '-'."""
    anchors, fenced = set(), False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.*)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_heading_anchors_follow_github():
    anchors = heading_anchors(ROOT / "README.md")
    assert "measured-2-core-cpu-no-gpu" in anchors  # "### Measured (2-core CPU, no GPU)"
    assert "1-a-few-scripted-demonstrations-as-a-local-lerobotdataset" not in heading_anchors(
        ROOT / "docs" / "recipes.md"
    )  # a bash comment inside a code block is no heading


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(doc: Path):
    for target in MARKDOWN_LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        destination = (doc.parent / path).resolve() if path else doc
        assert destination.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
        assert destination == ROOT or ROOT in destination.parents, f"{doc.relative_to(ROOT)} links outside: {target}"
        if anchor:
            assert destination.suffix == ".md", f"{doc.relative_to(ROOT)}: anchor on a non-markdown target {target}"
            assert anchor in heading_anchors(destination), f"{doc.relative_to(ROOT)}: no heading for {target}"
