"""The documentation stays true to the code: generated config reference, parseable example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))


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
