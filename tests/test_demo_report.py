"""The demo's report: numbers, intervals, the learning-curve PNG and the commands it was produced with."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.demo import pipeline, report, stages
from lerobot_policy_pi_rl.demo.settings import DemoSettings


def _eval(rate: float, n: int = 100) -> dict:
    from lerobot_policy_pi_rl.scripts.evaluate import wilson_interval

    return {"success_rate": rate, "success_ci95": list(wilson_interval(round(rate * n), n)), "mean_return": rate,
            "mean_length": 50.0, "num_episodes": n}


def test_report_quotes_evaluations_curves_timings_and_commands(tmp_path):
    settings = DemoSettings(run_dir=tmp_path)
    settings.commands = ["lerobot-train --policy.type=pi_rl", "lerobot-pi-rl-train --num_updates=2"]
    settings.timings = {"SFT (lerobot-train)": 90.0, "PI-RL": 700.0}
    curve = [
        {"update": 1, "wall_time_s": 10.0, "rollout/interaction_steps": 1000, "rollout/success_rate": 0.4},
        {"update": 2, "wall_time_s": 20.0, "rollout/interaction_steps": 2500, "rollout/success_rate": 0.7},
        {"update": 3, "wall_time_s": 30.0, "rollout/interaction_steps": 4000},  # no finished episode yet: skipped
    ]
    path = report.write_report(settings, {"sft": _eval(0.44), "pi_rl": _eval(0.82)}, {"pi_rl": curve}, 975.0)
    text = path.read_text()
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
        pipeline.parse_args(["--run_dir", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "earlier results"


def test_variant_choice_is_validated():
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--variant", "flow_sdee"])


def test_stages_are_recorded_as_they_run_and_the_report_rebuilds_with_a_later_sac_run(tmp_path):
    """A stage that fails still leaves its command and time in stages.json; `--report_only` re-renders the report
    from the run directory, folding in a SAC baseline added afterwards (with fewer env steps: said so)."""
    import sys

    settings = DemoSettings(run_dir=tmp_path, variant="flow_noise")
    stages.run_stage(settings, "ok stage", [sys.executable, "-c", "pass"])
    with pytest.raises(SystemExit, match="failed with exit code 3"):
        stages.run_stage(settings, "bad stage", [sys.executable, "-c", "raise SystemExit(3)"])
    recorded = stages.load_stages(tmp_path)
    assert recorded.variant == "flow_noise" and list(recorded.timings) == ["ok stage", "bad stage"]
    assert recorded.commands[1].endswith("'raise SystemExit(3)'")

    row = {"update": 1, "wall_time_s": 5.0, "rollout/interaction_steps": 3000, "rollout/success_rate": 0.5}
    for name, rate, steps in (("pi_rl", 0.88, 3000), ("sac", 0.02, 1200)):
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(_eval(rate)))
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({**row, "rollout/interaction_steps": steps}) + "\n")
    (tmp_path / "eval_sft.json").write_text(json.dumps(_eval(0.44)))
    text = report.rebuild_report(tmp_path).read_text()
    assert "Backbone `flow_mlp`, variant `flow_noise`" in text
    assert "| pi_rl | 88.0 % [80.2, 93.0]" in text and "| sac | 2.0 % [0.6, 7.0]" in text and "| 1200 |" in text
    assert "SAC ran 1200 env steps, fewer than PI-RL's 3000" in text


def test_report_only_needs_a_run_directory_with_stages(tmp_path):
    with pytest.raises(SystemExit, match="stages.json not found"):
        pipeline.main(["--report_only", "--run_dir", str(tmp_path)])


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
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv: commands.append(argv))
    settings = pipeline.parse_args([*argv, "--run_dir", str(tmp_path / "run")])
    pipeline.pi_rl(settings, tmp_path / "sft")
    (argv_rl,) = commands
    assert f"--num_updates={updates}" in argv_rl
    assert f"--algorithm.actor_lr={actor_lr}" in argv_rl


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ["--algorithm.advantage.type=gae"]),
    (["--advantage", "grpo", "--grpo_group_size", "2"],
     ["--algorithm.advantage.type=grpo", "--algorithm.advantage.group_size=2"]),
])
def test_rl_stage_passes_the_advantage_estimator(tmp_path, monkeypatch, argv, expected):
    """`--advantage grpo` reaches lerobot-pi-rl-train, whose config parses it (the PPO vs GRPO comparison)."""
    from lerobot_policy_pi_rl.runtime.cli import load_config

    commands = []
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv: commands.append(argv))
    settings = pipeline.parse_args([*argv, "--run_dir", str(tmp_path / "run")])
    pipeline.pi_rl(settings, tmp_path / "sft")
    (argv_rl,) = commands
    assert [a for a in argv_rl if a.startswith("--algorithm.advantage.")] == expected
    flags = [a for a in argv_rl[1:] if not a.startswith("--policy.path")] + ["--policy.type=pi_rl"]
    cfg = load_config(flags)
    assert cfg.algorithm.advantage.type == (argv[1] if argv else "gae")


def test_rl_updates_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--rl_updates", "0", "--run_dir", str(tmp_path / "run")])
    assert "--rl_updates=0" in capsys.readouterr().err


def test_a_stage_that_records_its_own_stages_leaves_its_commands_in_the_record(tmp_path):
    """A baseline's runner given the run directory records its own stages there; the demo then holds those (the
    real commands), not its wrapper's, also when the runner fails."""
    import sys

    settings = DemoSettings(run_dir=tmp_path)
    stages.run_stage(settings, "first", [sys.executable, "-c", "pass"])
    # What a runner's own `run_stage` does to the record, without importing the package (fast).
    nested = ("import json, sys; path = sys.argv[1] + '/stages.json'; record = json.load(open(path)); "
              "record['commands'].append('inner-command'); record['timings_s'][sys.argv[2]] = 0.1; "
              "json.dump(record, open(path, 'w'))")
    stages.run_recording_stage(settings, "wrapper", [sys.executable, "-c", nested, str(tmp_path), "inner"])
    assert list(settings.timings) == ["first", "inner"] and settings.commands[-1] == "inner-command"
    with pytest.raises(SystemExit, match="stage 'wrapper' failed with exit code 4"):
        stages.run_recording_stage(settings, "wrapper",
                                   [sys.executable, "-c", nested + "; raise SystemExit(4)", str(tmp_path), "again"])
    assert list(settings.timings) == ["first", "inner", "again"]
    assert stages.load_stages(tmp_path).commands == settings.commands and len(settings.commands) == 3


def test_sac_stage_runs_the_baseline_runner_on_the_run_directory(tmp_path, monkeypatch):
    import importlib.util

    calls = []
    monkeypatch.setattr(pipeline, "run_recording_stage", lambda settings, name, argv: calls.append(argv))
    settings = DemoSettings(run_dir=tmp_path)
    pipeline.sac_baseline(settings, tmp_path / "demos", env_steps=1234)
    (argv,) = calls
    assert argv[1] == "-m" and importlib.util.find_spec(f"{argv[2]}.__main__") is not None
    assert argv[3:] == ["--run_dir", str(tmp_path), "--demos", str(tmp_path / "demos"), "--env_steps", "1234"]


def test_sac_runner_appends_its_stages_to_a_demo_run_directory(tmp_path, monkeypatch, capsys):
    """`python -m lerobot_policy_pi_rl.baselines.sac --run_dir <demo run>`: the demo's protocol, its stages added to
    the run's record, SAC in the rebuilt report. (The SAC run itself is a one-line stand-in here; the real one runs
    in tests/test_sac_unchanged.py.)"""
    import sys

    from lerobot_policy_pi_rl.baselines.sac import runner

    settings = DemoSettings(run_dir=tmp_path, variant="flow_sde", eval_episodes=100, eval_workers=1)
    stages.run_stage(settings, "PI-RL", [sys.executable, "-c", "pass"])
    row = {"update": 1, "wall_time_s": 5.0, "rollout/interaction_steps": 3000, "rollout/success_rate": 0.5}
    for name, rate in (("sft", 0.44), ("pi_rl", 0.88)):
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(_eval(rate)))
    (tmp_path / "pi_rl").mkdir()
    (tmp_path / "pi_rl" / "metrics.jsonl").write_text(json.dumps(row) + "\n")

    trained = []

    def stand_in_sac_run(*, output_dir, env_steps, **_):
        trained.append(env_steps)
        model = Path(output_dir) / "checkpoints" / "last" / "pretrained_model"
        return [sys.executable, "-c", f"import pathlib; pathlib.Path({str(model)!r}).mkdir(parents=True)"]

    evaluated = []

    def stand_in_evaluate(settings, name, policy_path):
        evaluated.append((name, settings.eval_workers, settings.eval_episodes))
        settings.timings[f"evaluate {name}"] = 1.0
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(_eval(0.02)))
        (tmp_path / "sac" / "metrics.jsonl").write_text(json.dumps({**row, "rollout/interaction_steps": 1200}) + "\n")
        return _eval(0.02)

    monkeypatch.setattr(runner, "sac_train_argv", stand_in_sac_run)
    monkeypatch.setattr(runner, "evaluate", stand_in_evaluate)
    assert runner.main(["--run_dir", str(tmp_path), "--demos", str(tmp_path / "demos"), "--env_steps", "3000"]) == 0
    assert trained == [3000] and evaluated == [("sac", 1, 100)]
    recorded = stages.load_stages(tmp_path)
    assert list(recorded.timings)[0] == "PI-RL" and any("SAC baseline" in name for name in recorded.timings)
    assert '"success_rate": 0.02' in capsys.readouterr().out
    text = report.rebuild_report(tmp_path).read_text()
    assert "variant `flow_sde`" in text and "| sac | 2.0 % [0.6, 7.0]" in text


def test_a_bad_log_level_fails_before_the_first_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PI_RL_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--run_dir", str(tmp_path / "run")])
    assert "PI_RL_LOG_LEVEL='chatty'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("level", "bars_off"), [(None, True), ("INFO", True), ("DEBUG", False)])
def test_recording_runs_without_dataset_progress_bars_below_debug(tmp_path, monkeypatch, level, bars_off):
    """Recording saves one `datasets` table per episode, each with a progress bar; the other stages keep theirs
    (LeRobot re-enables them after loading a dataset, which would warn)."""
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    if level is None:
        monkeypatch.delenv("PI_RL_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("PI_RL_LOG_LEVEL", level)
    envs = {}
    monkeypatch.setattr(pipeline, "run_stage",
                        lambda settings, name, argv, env=None: envs.update({name: stages.stage_env(env)}))
    settings = DemoSettings(run_dir=tmp_path)
    pipeline.record(settings)
    pipeline.sft(settings, tmp_path / "demos")
    pipeline.pi_rl(settings, tmp_path / "sft")
    flags = {name: env.get("HF_DATASETS_DISABLE_PROGRESS_BARS") for name, env in envs.items()}
    assert flags.pop("record demonstrations") == ("1" if bars_off else None)
    assert set(flags.values()) == {None}, flags


def test_smolvla_recipe_gives_every_stage_the_same_env_options_and_its_commands_parse(tmp_path, monkeypatch):
    """`--backbone smolvla`: the recording, SFT, PI-RL and evaluation stages all see the cube in the state and a blank
    camera; SFT builds the debug SmolVLA with every weight trainable, PI-RL freezes its VLM; both configs parse."""
    from lerobot_policy_pi_rl.runtime.cli import load_config

    commands = {}
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv, env=None: commands.update({name: argv}))
    monkeypatch.setattr(stages, "run_stage", lambda settings, name, argv, env=None: commands.update({name: argv}))
    settings = pipeline.parse_args(["--backbone", "smolvla", "--run_dir", str(tmp_path / "run")])
    settings.run_dir.mkdir()
    (settings.run_dir / "eval_sft.json").write_text("{}")  # what the evaluation command would write
    assert (settings.variant, settings.sft_steps) == ("flow_noise", 400)
    assert settings.run_dir.name == "run" and pipeline.run_name(settings) == "smolvla_flow_noise"
    pipeline.record(settings)
    pipeline.sft(settings, tmp_path / "demos")
    pipeline.pi_rl(settings, tmp_path / "sft")
    stages.evaluate(settings, "sft", tmp_path / "sft")
    record, sft, rl, evaluate = (commands[name] for name in (
        "record demonstrations", "SFT (lerobot-train)", "PI-RL (lerobot-pi-rl-train: learner + actors over gRPC)",
        "evaluate sft"))
    script_flags = ["--state_includes_cube", "--camera", "blank", "--camera_size", "32"]
    for argv in (record, evaluate):
        assert argv[-len(script_flags):] == script_flags
    assert {"--env.state_includes_cube=true", "--env.camera=blank", "--env.camera_size=32"} <= set(rl)
    assert {"--policy.backbone.type=smolvla", "--policy.backbone.debug_size=tiny",
            "--policy.backbone.freeze_vlm=false", "--steps=400"} <= set(sft)
    assert "--policy.backbone.freeze_vlm=true" in rl
    cfg = load_config([a for a in rl[1:] if not a.startswith("--policy.path")] + ["--policy.type=pi_rl",
                                                                                  "--policy.backbone.type=smolvla"])
    assert (cfg.env.camera, cfg.env.state_includes_cube, cfg.policy.backbone.freeze_vlm) == ("blank", True, True)
    # Flow-Noise explores with twice the policy's default std bounds (SmolVLA's actions are MEAN_STD-normalized).
    variant = cfg.policy.variant
    assert (variant.type, variant.min_std, variant.max_std) == ("flow_noise", 0.16, 0.32)


def test_smolvla_recipe_widens_only_flow_noise_and_flow_mlp_keeps_the_policy_defaults(tmp_path, monkeypatch):
    commands = {}
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv, env=None: commands.update({name: argv}))
    rl_stage = "PI-RL (lerobot-pi-rl-train: learner + actors over gRPC)"
    for i, argv in enumerate((["--backbone", "smolvla", "--variant", "flow_sde"], ["--variant", "flow_noise"])):
        settings = pipeline.parse_args([*argv, "--run_dir", str(tmp_path / f"run{i}")])
        pipeline.pi_rl(settings, tmp_path / "sft")
        assert not [a for a in commands[rl_stage] if "_std=" in a], (argv, commands[rl_stage])


def test_the_demos_pi_rl_command_carries_every_ppo_setting(tmp_path, monkeypatch):
    """What the demo's settings say is what the learner parses: each PPO value set away from its default."""
    from lerobot_policy_pi_rl.runtime.cli import load_config

    commands = {}
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv, env=None: commands.update({name: argv}))
    ppo = {"rollout_chunks": 96, "actor_lr": 2e-5, "critic_lr": 5e-4, "update_epochs": 3, "critic_warmup_updates": 2,
           "minibatch_size": 48}
    settings = dataclasses.replace(pipeline.parse_args(["--run_dir", str(tmp_path / "run")]), **ppo)
    pipeline.pi_rl(settings, tmp_path / "sft")
    (argv,) = commands.values()
    cfg = load_config([a for a in argv[1:] if not a.startswith("--policy.path")] + ["--policy.type=pi_rl"])
    assert {name: getattr(cfg.algorithm, name) for name in ppo} == ppo


def test_env_flags_for_the_scripts_and_for_lerobot_pi_rl_train():
    from lerobot_policy_pi_rl.demo.settings import env_flags

    options = {"state_includes_cube": True, "camera": "front", "camera_size": 64}
    assert env_flags(options, prefix="--") == ["--state_includes_cube", "--camera", "front", "--camera_size", "64"]
    assert env_flags({**options, "randomize_cube": False}, prefix="--env.") == [
        "--env.state_includes_cube=true", "--env.camera=front", "--env.camera_size=64", "--env.randomize_cube=false"]
    # The scripts' boolean options are switches that turn something on: there is no flag for false.
    with pytest.raises(ValueError, match="randomize_cube=False"):
        env_flags({"randomize_cube": False}, prefix="--")
    with pytest.raises(ValueError, match="backbone='pi0'"):
        DemoSettings(backbone="pi0")


def _rows(rates: list[float | None], steps_per_update: int = 100) -> list[dict]:
    """Metrics rows, one per update, `steps_per_update` env steps each; None: no finished episode yet."""
    rows = []
    for i, rate in enumerate(rates, start=1):
        row = {"update": i, "rollout/interaction_steps": i * steps_per_update}
        if rate is not None:
            row["rollout/success_rate"] = rate
        rows.append(row)
    return rows


@pytest.mark.parametrize(("rates", "expected"), [
    ([0.95] * 9, None),  # fewer than 10 updates
    ([0.5] * 30, None),  # never reached
    ([0.5] * 5 + [0.9] * 10, 600),  # reached at the very end, exactly at the threshold
    ([0.9] * 9 + [0.89] + [1.0] * 10, 1100),  # a dip resets the streak
    ([0.9] * 4 + [None] + [0.9] * 10 + [0.2], 600),  # a row without a success rate resets it too
    ([1.0] * 25, 100),  # the first update of the first run, not of a later one
])
def test_env_steps_to_success_is_where_the_first_run_of_ten_updates_at_90_percent_starts(rates, expected):
    assert report.env_steps_to_success(_rows(rates)) == expected


def test_env_steps_to_success_counts_only_updates_with_a_full_window():
    """The first updates' windows hold the short, successful episodes that finished first: they read high."""
    rows = _rows([1.0] * 15)
    for row, episodes in zip(rows, [12, 30, 60, 99, 100, 100], strict=False):
        row["rollout/window_episodes"] = episodes
    assert report.env_steps_to_success(rows) == 500  # update 5, the first with 100 episodes
    rows[7]["rollout/window_episodes"] = 99  # a row below a full window breaks the run
    assert report.env_steps_to_success(rows) is None


def test_env_steps_to_success_takes_its_threshold_and_run_length():
    rows = _rows([0.6, 0.7, 0.7, 0.5, 0.8])
    assert report.env_steps_to_success(rows, success=0.7, updates=2) == 200
    assert report.env_steps_to_success(rows, success=0.7, updates=3) is None
    assert report.env_steps_to_success(rows, success=0.5, updates=5) == 100
    with pytest.raises(ValueError, match="updates=0"):
        report.env_steps_to_success(rows, updates=0)


def _rl_command(tmp_path, monkeypatch, argv: list[str]) -> list[str]:
    commands = []
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv, env=None: commands.append(argv))
    settings = pipeline.parse_args([*argv, "--run_dir", str(tmp_path / "run")])
    pipeline.pi_rl(settings, tmp_path / "sft", tmp_path / "demos")
    (argv_rl,) = commands
    return argv_rl


def test_offline_ratio_mixes_the_sft_demonstrations_into_the_rl_stage(tmp_path, monkeypatch):
    """`--offline_ratio 0` (the default) leaves the PI-RL command as it was; above 0 the demonstrations SFT trained
    on become the learner's offline source, and lerobot-pi-rl-train's config parses the flags."""
    from lerobot_policy_pi_rl.runtime.cli import load_config

    plain = _rl_command(tmp_path, monkeypatch, [])
    assert _rl_command(tmp_path, monkeypatch, ["--offline_ratio", "0"]) == plain
    assert not [a for a in plain if a.startswith(("--algorithm.offline", "--policy.actor_learner_config"))]
    mixed = _rl_command(tmp_path, monkeypatch, ["--offline_ratio", "0.25", "--offline_loss_weight", "0.5"])
    assert [a for a in mixed if a not in plain] == [
        "--algorithm.offline.repo_ids=[local/pickcube]", f"--algorithm.offline.roots=[{tmp_path / 'demos'}]",
        "--algorithm.offline.ratio=0.25", "--algorithm.offline.loss_weight=0.5"]
    cfg = load_config([a for a in mixed[1:] if not a.startswith("--policy.path")] + ["--policy.type=pi_rl"])
    offline = cfg.algorithm.offline
    assert (offline.repo_ids, offline.roots, offline.ratio, offline.loss_weight) == (
        ["local/pickcube"], [str(tmp_path / "demos")], 0.25, 0.5)


@pytest.mark.parametrize(("argv", "named"), [
    (["--offline_ratio", "1"], "--offline_ratio=1.0"),
    (["--offline_ratio", "-0.1"], "--offline_ratio=-0.1"),
    (["--offline_ratio", "nan"], "--offline_ratio=nan"),
    (["--offline_ratio", "0.2", "--offline_loss_weight", "-1"], "--offline_loss_weight=-1.0"),
])
def test_offline_settings_are_validated_before_anything_runs(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit):
        pipeline.parse_args([*argv, "--run_dir", str(tmp_path / "run")])
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_report_states_the_offline_ratio_and_env_steps_to_90_percent(tmp_path):
    settings = DemoSettings(run_dir=tmp_path, offline_ratio=0.25)
    stages.save_stages(settings)
    curve = [{**row, "wall_time_s": 1.0} for row in _rows([0.5] + [0.95] * 10)]
    text = report.write_report(settings, {"sft": _eval(0.44), "pi_rl": _eval(0.92)}, {"pi_rl": curve}, 10.0).read_text()
    assert "Online/offline mixing: 25 % of each PPO minibatch's rows are the SFT demonstrations" in text
    assert "Env steps to 90 % training-episode success: 200 (" in text and "not the evaluation" in text
    summary = json.loads((tmp_path / "report.json").read_text())
    assert (summary["offline_ratio"], summary["pi_rl_env_steps_to_success"]) == (0.25, 200)
    # Rebuilt from the run directory: the ratio comes back from stages.json.
    (tmp_path / "eval_pi_rl.json").write_text(json.dumps(_eval(0.92)))
    (tmp_path / "pi_rl").mkdir()
    (tmp_path / "pi_rl" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve[:5]))
    text = report.rebuild_report(tmp_path).read_text()
    assert "Online/offline mixing: 25 %" in text and "not reached in 500 env steps" in text

    plain = report.write_report(DemoSettings(run_dir=tmp_path), {"pi_rl": _eval(0.92)}, {"pi_rl": curve}, 1.0)
    assert "Online/offline mixing" not in plain.read_text()


def test_the_rl_stage_takes_a_learner_port_when_one_is_set(tmp_path, monkeypatch):
    """Runs side by side on one machine (the mixing comparison's cells) each give the learner their own port; the
    demo itself keeps LeRobot's default (no flag)."""
    commands = []
    monkeypatch.setattr(pipeline, "run_stage", lambda settings, name, argv, env=None: commands.append(argv))
    pipeline.pi_rl(DemoSettings(run_dir=tmp_path, learner_port=50123), tmp_path / "sft")
    pipeline.pi_rl(DemoSettings(run_dir=tmp_path), tmp_path / "sft")
    ported, plain = commands
    assert [a for a in ported if a not in plain] == ["--policy.actor_learner_config.learner_port=50123"]
