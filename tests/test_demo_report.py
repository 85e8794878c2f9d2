"""The demo's report: numbers, intervals, the learning-curve PNG and the commands it was produced with."""

from __future__ import annotations

import json

import pytest

from lerobot_policy_pi_rl import demo


def _eval(rate: float, n: int = 100) -> dict:
    from lerobot_policy_pi_rl.scripts.evaluate import wilson_interval

    return {"success_rate": rate, "success_ci95": list(wilson_interval(round(rate * n), n)), "mean_return": rate,
            "mean_length": 50.0, "num_episodes": n}


def test_report_quotes_evaluations_curves_timings_and_commands(tmp_path):
    settings = demo.DemoSettings(run_dir=tmp_path)
    settings.commands = ["lerobot-train --policy.type=pi_rl", "lerobot-pi-rl-train --num_updates=2"]
    settings.timings = {"SFT (lerobot-train)": 90.0, "PI-RL": 700.0}
    curve = [
        {"update": 1, "wall_time_s": 10.0, "rollout/interaction_steps": 1000, "rollout/success_rate": 0.4},
        {"update": 2, "wall_time_s": 20.0, "rollout/interaction_steps": 2500, "rollout/success_rate": 0.7},
        {"update": 3, "wall_time_s": 30.0, "rollout/interaction_steps": 4000},  # no finished episode yet: skipped
    ]
    report = demo.write_report(settings, {"sft": _eval(0.44), "pi_rl": _eval(0.82)}, {"pi_rl": curve}, 975.0)
    text = report.read_text()
    assert "| sft | 44.0 % [34.7, 53.8]" in text
    assert "| pi_rl | 82.0 % [73.3, 88.3]" in text and "| 4000 |" in text
    assert "lerobot-pi-rl-train --num_updates=2" in text and "total: 975 s" in text
    png = (tmp_path / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["evals"]["pi_rl"]["success_rate"] == 0.82 and summary["pi_rl_env_steps"] == 4000


def test_existing_run_dir_is_never_overwritten_without_asking(tmp_path):
    (tmp_path / "keep.txt").write_text("earlier results")
    with pytest.raises(SystemExit, match="already exists"):
        demo.parse_args(["--run_dir", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "earlier results"


def test_variant_choice_is_validated():
    with pytest.raises(SystemExit):
        demo.parse_args(["--variant", "flow_sdee"])


def test_stages_are_recorded_as_they_run_and_the_report_rebuilds_with_a_later_sac_run(tmp_path):
    """A stage that fails still leaves its command and time in stages.json; `--report_only` re-renders the report
    from the run directory, folding in a SAC baseline added afterwards (with fewer env steps: said so)."""
    import sys

    settings = demo.DemoSettings(run_dir=tmp_path, variant="flow_noise")
    demo.run_stage(settings, "ok stage", [sys.executable, "-c", "pass"])
    with pytest.raises(SystemExit, match="failed with exit code 3"):
        demo.run_stage(settings, "bad stage", [sys.executable, "-c", "raise SystemExit(3)"])
    recorded = demo.load_stages(tmp_path)
    assert recorded.variant == "flow_noise" and list(recorded.timings) == ["ok stage", "bad stage"]
    assert recorded.commands[1].endswith("'raise SystemExit(3)'")

    row = {"update": 1, "wall_time_s": 5.0, "rollout/interaction_steps": 3000, "rollout/success_rate": 0.5}
    for name, rate, steps in (("pi_rl", 0.88, 3000), ("sac", 0.02, 1200)):
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(_eval(rate)))
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({**row, "rollout/interaction_steps": steps}) + "\n")
    (tmp_path / "eval_sft.json").write_text(json.dumps(_eval(0.44)))
    text = demo.rebuild_report(tmp_path).read_text()
    assert "Variant `flow_noise`" in text
    assert "| pi_rl | 88.0 % [80.2, 93.0]" in text and "| sac | 2.0 % [0.6, 7.0]" in text and "| 1200 |" in text
    assert "SAC ran 1200 env steps, fewer than PI-RL's 3000" in text


def test_report_only_needs_a_run_directory_with_stages(tmp_path):
    with pytest.raises(SystemExit, match="stages.json not found"):
        demo.main(["--report_only", "--run_dir", str(tmp_path)])


@pytest.mark.parametrize(
    ("argv", "updates", "actor_lr"),
    [
        (["--variant", "flow_noise"], 180, 3e-6),
        (["--variant", "flow_sde"], 130, 1e-5),
        (["--variant", "flow_sde", "--rl_updates", "7", "--actor_lr", "2e-5"], 7, 2e-5),
    ],
)
def test_rl_stage_uses_the_variant_defaults_unless_overridden(tmp_path, monkeypatch, argv, updates, actor_lr):
    commands = []
    monkeypatch.setattr(demo, "run_stage", lambda settings, name, argv: commands.append(argv))
    settings = demo.parse_args([*argv, "--run_dir", str(tmp_path / "run")])
    demo.pi_rl(settings, tmp_path / "sft")
    (argv_rl,) = commands
    assert f"--num_updates={updates}" in argv_rl
    assert f"--algorithm.actor_lr={actor_lr}" in argv_rl


def test_rl_updates_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--rl_updates", "0", "--run_dir", str(tmp_path / "run")])
    assert "--rl_updates=0" in capsys.readouterr().err
