"""The benchmark runner without training: its one recipe, the commands it runs per task, resume and the
no-overwrite rule (a fake stage runner writes the outputs real stages would), and the report it writes."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.benchmark import commands, recipe, report, runner, rundir
from lerobot_policy_pi_rl.benchmark.recipe import BenchmarkRecipe
from lerobot_policy_pi_rl.runtime.metrics import task_label
from lerobot_policy_pi_rl.scripts.evaluate import wilson_interval

TWO = "push-v3,pick-place-v3"
# Evaluation success per task (SFT, PI-RL) the fake stages report, and the fake learner's training curve.
RATES = {"push-v3": (0.40, 0.70), "pick-place-v3": (0.10, 0.20), "door-open-v3": (0.50, 0.80)}
# (env steps, training-episode success, episodes in the window): the window is full from the second update on.
TRAINING = [(1000, 0.3, 60), (2000, 0.45, 100), (3000, 0.6, 100)]


def _flag(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def _result(rate: float, n: int) -> dict:
    k = round(rate * n)
    return {"success_rate": k / n, "success_ci95": list(wilson_interval(k, n)), "num_successes": k,
            "num_episodes": n}


class FakeStages:
    """Stands in for `run_logged_stage`: records the command as the real one does, writes the output the real
    stage would, and fails (after writing a partial output) where told, once."""

    def __init__(self, fail: tuple[tuple[str, str], ...] = ()):
        self.fail = set(fail)  # (--env.task value, stage title)
        self.calls: list[tuple[str, str, list[str]]] = []

    def __call__(self, log, name, argv, env=None):
        log.commands.append(" ".join(argv))
        log.timings[name] = 60.0
        self.calls.append((log.label, name, list(argv)))
        tasks = _flag(argv, "--env.task") if name != commands.TITLES["sft"] else None
        failing = (tasks, name) in self.fail
        self.fail.discard((tasks, name))
        if name == commands.TITLES["demos"]:
            Path(_flag(argv, "--output_dir")).mkdir(parents=True)
        elif name in (commands.TITLES["sft"], commands.TITLES["pi_rl"]):
            out = Path(_flag(argv, "--output_dir"))
            out.mkdir(parents=True)
            if name == commands.TITLES["pi_rl"]:
                rows = []
                for steps, rate, episodes in TRAINING:
                    row = {"update": len(rows) + 1, "wall_time_s": 1.0, "rollout/interaction_steps": steps,
                           "rollout/success_rate": rate, "rollout/window_episodes": episodes}
                    for t in tasks.split(","):
                        row[f"rollout/success_rate/{task_label(t, 0)}"] = rate / 2
                        row[f"rollout/window_episodes/{task_label(t, 0)}"] = episodes
                    rows.append(row)
                (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if failing:
                (out / "partial").write_text("")
            else:
                (out / commands.MODEL).mkdir(parents=True)
                (out / commands.MODEL / "config.json").write_text("{}")
        else:
            n = int(_flag(argv, "--num_episodes"))
            which = 0 if _flag(argv, "--policy_path").split("/")[-4] == "sft" else 1
            per_task = {t: {**_result(RATES[t][which], n), "mean_length": 100.0, "env_steps": 100 * n}
                        for t in tasks.split(",")}
            pooled = report.pooled(list(per_task.values()))
            result = {**pooled, "per_task": per_task, "success_definition": "flag", "env_steps": 1}
            if not failing:
                Path(_flag(argv, "--output")).write_text(json.dumps(result))
        log.save()
        if failing:
            raise SystemExit(f"[fake] stage '{name}' failed with exit code 1")


def _run(argv: list[str], fake: FakeStages) -> int:
    args, parser = runner.parse_args(argv)
    return runner.run_benchmark(runner.build(args, parser), run=fake)


def _stages_run(fake: FakeStages, task: str) -> list[str]:
    by_title = {title: stage for stage, title in commands.TITLES.items()}
    return [by_title[name] for _, name, argv in fake.calls
            if name == commands.TITLES["sft"] and f"local/metaworld_{task}" in " ".join(argv)
            or name != commands.TITLES["sft"] and f"--env.task={task}" in argv]


# ---------------------------------------------------------------------------------------------------------------
# The one recipe
# ---------------------------------------------------------------------------------------------------------------


def test_the_recipe_is_one_set_of_scalars_with_no_per_task_setting():
    r = BenchmarkRecipe()
    for f in fields(r):
        value = getattr(r, f.name)
        assert value is None or isinstance(value, int | float | str), f"{f.name} is not a scalar: {value!r}"
        assert "task" not in f.name
    with pytest.raises(ValueError, match=r"unknown fields \['per_task'\]"):
        BenchmarkRecipe.from_json({**r.to_json(), "per_task": {"push-v3": {"sft_steps": 10}}})
    with pytest.raises(SystemExit):  # nor a flag for one task
        runner.parse_args(["--tasks", "push-v3", "--run_dir", "x", "--push-v3.sft_steps", "10"])
    # Scaling changes the whole recipe, and only its scale.
    scaled = r.scaled(sft_steps=5, rl_updates=None)
    assert scaled.sft_steps == 5 and scaled.rl_updates == r.rl_updates
    assert r.differences(scaled) == {"sft_steps": (r.sft_steps, 5)}
    with pytest.raises(ValueError, match=r"\['actor_lr'\] cannot be changed"):
        r.scaled(actor_lr=1e-3)


@pytest.mark.parametrize("value", [BenchmarkRecipe(), BenchmarkRecipe(chunk_size=8, n_action_steps=4,
                                                                        variant="flow_sde", demo_action_noise=0.1)])
def test_the_recipe_round_trips_through_json(value):
    assert BenchmarkRecipe.from_json(json.loads(json.dumps(value.to_json()))) == value


def test_bad_recipe_values_are_named():
    with pytest.raises(ValueError, match="variant='flow_sdee' is not valid; allowed: flow_sde, flow_noise"):
        BenchmarkRecipe(variant="flow_sdee")
    with pytest.raises(ValueError, match="sft_steps=0 must be >= 1"):
        BenchmarkRecipe().scaled(sft_steps=0)
    with pytest.raises(ValueError, match="backbone='smolvla'"):
        BenchmarkRecipe(backbone="smolvla")


def test_tasks_are_checked_against_metaworld():
    assert recipe.task_set("dev") == ("push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
                                      "button-press-topdown-v3")
    mt10 = recipe.task_set("mt10")
    assert len(mt10) == 10 and "window-close-v3" in mt10
    assert recipe.check_tasks(["push-v3"]) == ("push-v3",)
    with pytest.raises(ValueError, match=r"unknown MetaWorld task\(s\) push-v2; valid: .*pick-place-v3"):
        recipe.check_tasks(["push-v3", "push-v2"])
    with pytest.raises(ValueError, match=r"lists push-v3 more than once"):
        recipe.check_tasks(["push-v3", "push-v3"])
    with pytest.raises(SystemExit):
        runner.main(["--tasks", "pushh-v3", "--run_dir", "unused"])


# ---------------------------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------------------------


def _unit_commands(tmp_path: Path, tasks: tuple[str, ...], multitask: bool, r: BenchmarkRecipe | None = None):
    unit = commands.units(tmp_path, tasks, multitask=multitask)[0]
    return unit, {stage: commands.stage_command(stage, r or BenchmarkRecipe(), unit, 7) for stage in commands.STAGES}


def test_single_task_commands(tmp_path):
    unit, cmd = _unit_commands(tmp_path, ("push-v3",), multitask=False)
    d = tmp_path / "tasks" / "push-v3"
    assert unit.directory == d
    assert cmd["demos"][1:] == [
        "-m", "lerobot_policy_pi_rl.scripts.record_demos", "--env.type=pi_rl_metaworld", "--env.task=push-v3",
        "--output_dir", str(d / "demos"), "--num_episodes", "10", "--action_noise", "0.1", "--seed", "7"]
    assert cmd["sft"][0].endswith("lerobot-train") and cmd["sft"][1:] == [
        "--policy.type=pi_rl", "--policy.backbone.type=flow_mlp", "--policy.variant.type=flow_noise",
        "--policy.device=cpu", "--policy.push_to_hub=false", "--dataset.repo_id=local/metaworld_push-v3",
        f"--dataset.root={d / 'demos'}", "--steps=1000", "--batch_size=64", "--save_freq=1000", "--log_freq=200",
        "--num_workers=0", "--seed=7", "--wandb.enable=false", f"--output_dir={d / 'sft'}"]
    rl = cmd["pi_rl"]
    assert rl[0].endswith("lerobot-pi-rl-train")
    for flag in (f"--policy.path={d / 'sft' / 'checkpoints' / 'last' / 'pretrained_model'}", "--policy.device=cpu",
                 "--env.type=pi_rl_metaworld", "--env.task=push-v3", "--algorithm.type=pi_rl",
                 "--algorithm.actor_lr=3e-06", "--algorithm.rollout_chunks=256", "--algorithm.minibatch_size=64",
                 "--algorithm.update_epochs=4", "--algorithm.critic_lr=0.001", "--algorithm.critic_warmup_updates=0",
                 "--num_updates=250", "--n_envs=8", "--num_actors=2", "--seed=7", "--wandb.enable=false",
                 "--env.episode_length=150",
                 f"--output_dir={d / 'pi_rl'}"):
        assert flag in rl, flag
    assert not any("noise_level" in a for a in rl)  # Flow-SDE's noise level only with flow_sde
    assert cmd["eval_pi_rl"][1:] == [
        "-m", "lerobot_policy_pi_rl.scripts.evaluate", "--env.type=pi_rl_metaworld", "--env.task=push-v3",
        "--policy_path", str(d / "pi_rl" / "checkpoints" / "last" / "pretrained_model"), "--num_episodes", "100",
        "--seed", "100000", "--workers", "2", "--output", str(d / "eval_pi_rl.json")]
    assert _flag(cmd["eval_sft"], "--policy_path") == str(d / "sft" / "checkpoints" / "last" / "pretrained_model")
    assert not any("one_hot" in a for c in cmd.values() for a in c)


def test_each_pi_rl_stage_gets_a_free_learner_port(tmp_path):
    """Two benchmark runs on one machine (or a benchmark next to any PI-RL run) must not share a learner port: a
    second learner fails to bind, and its actors would feed the first run."""
    import socket

    unit = commands.units(tmp_path, ("push-v3",), multitask=False)[0]
    port = int(_flag(commands.pi_rl_command(BenchmarkRecipe(), unit, 0), "--policy.actor_learner_config.learner_port"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing listens there
    assert _flag(commands.pi_rl_command(BenchmarkRecipe(), unit, 0, port=4321),
                 "--policy.actor_learner_config.learner_port") == "4321"


def test_recipe_policy_flags_reach_the_commands(tmp_path):
    r = BenchmarkRecipe(variant="flow_sde", chunk_size=8, n_action_steps=4, noise_level=0.3)
    _, cmd = _unit_commands(tmp_path, ("push-v3",), multitask=False, r=r)
    assert {"--policy.variant.type=flow_sde", "--policy.chunk_size=8", "--policy.n_action_steps=4"} <= set(cmd["sft"])
    assert "--policy.variant.noise_level=0.3" in cmd["pi_rl"]


@pytest.mark.parametrize(("num_tasks", "expected"), [(1, 8), (2, 8), (3, 9), (5, 10), (10, 10)])
def test_multitask_commands_one_hot_everywhere_but_sft_and_envs_a_multiple_of_the_tasks(tmp_path, num_tasks,
                                                                                      expected):
    tasks = recipe.task_set("mt10")[:num_tasks]
    unit, cmd = _unit_commands(tmp_path, tasks, multitask=True)
    assert unit.directory == tmp_path / "multitask" and unit.tasks == tasks
    for stage in ("demos", "pi_rl", "eval_sft", "eval_pi_rl"):
        assert "--env.task_one_hot=true" in cmd[stage] and f"--env.task={','.join(tasks)}" in cmd[stage]
    assert not any("one_hot" in a for a in cmd["sft"])
    assert "--dataset.repo_id=local/metaworld_multitask" in cmd["sft"]
    assert _flag(cmd["demos"], "--num_episodes") == str(BenchmarkRecipe().demo_episodes)  # per task
    assert f"--n_envs={expected}" in cmd["pi_rl"] and expected % num_tasks == 0
    # Budgets are per task: each task gets a single-task policy's SFT steps and PI-RL updates.
    r = BenchmarkRecipe()
    assert f"--steps={r.sft_steps * num_tasks}" in cmd["sft"] and f"--save_freq={r.sft_steps * num_tasks}" in cmd["sft"]
    assert f"--num_updates={r.rl_updates * num_tasks}" in cmd["pi_rl"]


# ---------------------------------------------------------------------------------------------------------------
# Running, resuming, refusing
# ---------------------------------------------------------------------------------------------------------------


def test_a_failed_stage_is_redone_and_finished_tasks_and_stages_are_skipped(tmp_path, capsys):
    run_dir = tmp_path / "run"
    fake = FakeStages(fail=(("pick-place-v3", commands.TITLES["pi_rl"]),))
    assert _run(["--tasks", TWO, "--run_dir", str(run_dir)], fake) == 1
    assert _stages_run(fake, "push-v3") == list(commands.STAGES)
    assert _stages_run(fake, "pick-place-v3") == ["demos", "sft", "eval_sft", "pi_rl"]
    err = capsys.readouterr().err
    assert "did not finish: pick-place-v3" in err and "Rerun the same command" in err
    assert re.fullmatch(r"bench 1/2 push-v3 \| \d+\.\d min", fake.calls[0][0])  # progress: task i/N, elapsed
    partial = run_dir / "tasks" / "pick-place-v3" / "pi_rl" / "partial"
    assert partial.exists()
    first_report = (run_dir / "report.md").read_text()
    assert "pick-place-v3 (next stage: PI-RL (lerobot-pi-rl-train))" in first_report
    # The aggregate covers the evaluated task only; the run directory's wall time every stage that ran.
    assert "+30.0 (mean) | 3000 (sum) | 5.0 (sum) |" in first_report and "Tasks improved by >= 25 points: 1 of 1 " \
        "(of 2 tasks; the others are not finished)." in first_report
    assert "Wall time of every stage run in this run directory: 9.0 min." in first_report
    recorded = rundir.UnitRecord.load(commands.units(run_dir, ("pick-place-v3",), multitask=False)[0])
    assert recorded.finished == ["demos", "sft", "eval_sft"] and "pi_rl" in recorded.commands

    again = FakeStages()
    assert _run(["--tasks", TWO, "--run_dir", str(run_dir)], again) == 0
    assert _stages_run(again, "push-v3") == []
    assert _stages_run(again, "pick-place-v3") == ["pi_rl", "eval_pi_rl"]
    assert not partial.exists()  # the failed attempt's leftovers are gone
    out = capsys.readouterr().out
    assert "1/2 push-v3: finished earlier, skipped" in out and "resuming at stage 'PI-RL" in out
    # The earlier report is kept; the resumed run wrote the next free name and says so.
    assert (run_dir / "report.md").read_text() == first_report
    second = (run_dir / "report_2.md").read_text()
    assert "This is `report_2.md`; the run directory already held `report.md`" in second
    assert "Not finished" not in second and (run_dir / "report_2.json").exists()
    assert (run_dir / "learning_curves_2.png").exists()

    nothing = FakeStages()
    assert _run(["--tasks", TWO, "--run_dir", str(run_dir)], nothing) == 0
    assert nothing.calls == [] and (run_dir / "report_3.md").exists()


def test_the_real_stage_runner_records_every_stage_and_shows_progress(tmp_path, monkeypatch, capsys):
    """demo/stages.py's runner (subprocesses that write each stage's output) with the benchmark's records."""
    import sys

    def stage_command(stage, recipe_, unit, seed):
        out = unit.output(stage)
        if stage.startswith("eval_"):
            code = f"import json; open({str(out)!r}, 'w').write(json.dumps({_result(0.5, 4)!r}))"
        elif stage == "demos":
            code = f"import os; os.makedirs({str(out)!r})"
        else:
            code = f"import os; os.makedirs({str(out / commands.MODEL)!r}); open({str(out / commands.MODEL / 'config.json')!r}, 'w').write('{{}}')"
        if stage == "pi_rl" and not (tmp_path / "failed_once").exists():
            (tmp_path / "failed_once").write_text("")
            code = "raise SystemExit(3)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(runner, "stage_command", stage_command)
    run_dir = tmp_path / "run"
    assert runner.main(["--tasks", "push-v3", "--run_dir", str(run_dir)]) == 1
    unit = commands.units(run_dir, ("push-v3",), multitask=False)[0]
    record = rundir.UnitRecord.load(unit)
    assert record.finished == ["demos", "sft", "eval_sft"]
    assert record.commands["pi_rl"].endswith("'raise SystemExit(3)'") and record.timings_s["pi_rl"] > 0
    captured = capsys.readouterr()
    assert re.search(r"=== \[bench 1/1 push-v3 \| \d+\.\d min\] SFT \(lerobot-train\): done in \d+s", captured.out)
    assert "stage 'PI-RL (lerobot-pi-rl-train)' failed with exit code 3" in captured.err
    assert runner.main(["--tasks", "push-v3", "--run_dir", str(run_dir)]) == 0
    record = rundir.UnitRecord.load(unit)
    assert record.finished == list(commands.STAGES) and set(record.timings_s) == set(commands.STAGES)
    assert "import os" in record.commands["pi_rl"]


def test_a_stage_whose_output_vanished_is_redone_with_every_later_stage(tmp_path):
    run_dir = tmp_path / "run"
    assert _run(["--tasks", "push-v3", "--run_dir", str(run_dir)], FakeStages()) == 0
    (run_dir / "tasks" / "push-v3" / "eval_sft.json").unlink()
    again = FakeStages()
    assert _run(["--tasks", "push-v3", "--run_dir", str(run_dir)], again) == 0
    assert _stages_run(again, "push-v3") == ["eval_sft", "pi_rl", "eval_pi_rl"]


def test_a_changed_recipe_seed_or_task_list_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert _run(["--tasks", "push-v3", "--run_dir", str(run_dir), "--sft_steps", "5"], FakeStages()) == 0
    fake = FakeStages()
    with pytest.raises(SystemExit, match=r"different recipe.*sft_steps: recorded 5, now 6; seed: recorded 0, now 1"):
        _run(["--tasks", "push-v3", "--run_dir", str(run_dir), "--sft_steps", "6", "--seed", "1"], fake)
    with pytest.raises(SystemExit, match=r"sft_steps: recorded 5, now 1000"):  # the default is a change too
        _run(["--tasks", "push-v3", "--run_dir", str(run_dir)], fake)
    with pytest.raises(SystemExit, match=r"tasks: recorded \['push-v3'\], now \['push-v3', 'pick-place-v3'\]"):
        _run(["--tasks", TWO, "--run_dir", str(run_dir), "--sft_steps", "5"], fake)
    with pytest.raises(SystemExit, match=r"multitask: recorded False, now True"):
        _run(["--tasks", "push-v3", "--multitask", "--run_dir", str(run_dir), "--sft_steps", "5"], fake)
    assert fake.calls == [] and not (run_dir / "report_2.md").exists()


def test_a_directory_that_is_not_a_benchmark_run_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("earlier results")
    with pytest.raises(SystemExit, match="not a benchmark run directory"):
        _run(["--tasks", "push-v3", "--run_dir", str(tmp_path)], FakeStages())
    with pytest.raises(SystemExit, match="benchmark.json not found"):
        runner.main(["--report_only", "--run_dir", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "earlier results"


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


def _percent(lo_hi: tuple[float, float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


def test_report_numbers_intervals_aggregate_and_labels(tmp_path):
    run_dir = tmp_path / "run"
    tasks = "push-v3,pick-place-v3,door-open-v3"
    assert _run(["--tasks", tasks, "--run_dir", str(run_dir), "--eval_episodes", "100"], FakeStages()) == 0
    text = (run_dir / "report.md").read_text()
    # Per task: Wilson intervals of 40/100 and 70/100, the change in points, env steps, wall-time split (minutes).
    assert "| push-v3 | 40.0 % [30.9, 49.8] (40/100) | 70.0 % [60.4, 78.1] (70/100) | +30.0 | 3000 | " \
           "1.0 / 1.0 / 2.0 / 1.0 / 5.0 |" in text
    assert "| pick-place-v3 | 10.0 % [5.5, 17.4] (10/100) | 20.0 % [13.3, 28.9] (20/100) | +10.0 |" in text
    # Aggregate: mean over tasks, pooled Wilson over all 300 episodes, k of N improved by >= 25 points.
    assert (f"| **all 3 evaluated tasks** | mean 33.3 %; pooled 33.3 % {_percent(wilson_interval(100, 300))} "
            f"(100/300) | mean 56.7 %; pooled 56.7 % {_percent(wilson_interval(170, 300))} (170/300) | "
            "+23.3 (mean) | 9000 (sum) | 15.0 (sum) |") in text
    assert "Tasks improved by >= 25 points: 2 of 3." in text
    # One success definition; the protocol; training-episode success apart and labelled.
    assert text.count("MetaWorld's success flag (info['success']) is true at any step") == 1
    assert "deterministic ODE (no exploration noise), 100 episodes per task from env seed 100000 on" in text
    evaluation, training = text.split("## Training-episode success (stochastic sampling; not evaluation)")
    assert "| push-v3 | 45.0 % | 60.0 % | 3 |" in training and "60.0 %" not in evaluation.split("| task |")[1]
    assert "stochastic sampling with exploration noise; not an evaluation" in text
    # The scaled run is labelled; every recipe value is listed; the commands are quoted per task.
    assert "**Not the benchmark recipe**" not in text and "The benchmark's default recipe, unchanged." in text
    assert all(f"| `{f.name}` |" in text for f in fields(BenchmarkRecipe))
    assert "### door-open-v3" in text and "--env.task=door-open-v3 --output_dir" in text

    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["per_task"]["push-v3"]["pi_rl"]["success_ci95"] == list(wilson_interval(70, 100))
    assert summary["per_task"]["push-v3"]["change_points"] == pytest.approx(30.0)
    assert summary["aggregate"]["tasks_improved"] == 2
    assert summary["aggregate"]["pi_rl_pooled"]["success_ci95"] == list(wilson_interval(170, 300))
    assert summary["per_task"]["push-v3"]["training_episode_success"] == {
        "first_full_window": 0.45, "last": 0.6, "updates_with_episodes": 3}
    assert summary["units"]["push-v3"]["wall_time_s"] == {"demos": 60.0, "SFT": 60.0, "evals": 120.0,
                                                          "PI-RL": 60.0, "total": 300.0}
    png = (run_dir / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_scaled_run_is_labelled_as_not_the_benchmark_recipe(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--tasks", "push-v3", "--run_dir", str(run_dir), "--demo_episodes", "2", "--sft_steps", "5",
            "--rl_updates", "1", "--eval_episodes", "4"]
    assert _run(argv, FakeStages()) == 0
    text = (run_dir / "report.md").read_text()
    assert ("**Not the benchmark recipe**: changed on the command line, for every task: `demo_episodes` 10 -> 2, "
            "`sft_steps` 1000 -> 5, `rl_updates` 250 -> 1, `eval_episodes` 100 -> 4.") in text
    assert "(2/4)" in text  # the intervals come from the evaluations' own episode counts
    assert json.loads((run_dir / "report.json").read_text())["recipe_changes"]["rl_updates"] == {
        "default": 250, "used": 1}


def test_a_run_takes_its_report_name_before_the_first_stage(tmp_path):
    """A `--report_only` while the run is going takes the next name, not the one the run will update."""
    run_dir = tmp_path / "run"

    class PeekingStages(FakeStages):
        def __call__(self, log, name, argv, env=None):
            if not self.calls:
                assert "No task has both evaluations yet." in (run_dir / "report.md").read_text()
                assert runner.main(["--report_only", "--run_dir", str(run_dir)]) == 0
            super().__call__(log, name, argv, env)

    assert _run(["--tasks", "push-v3", "--run_dir", str(run_dir)], PeekingStages()) == 0
    assert "(40/100)" in (run_dir / "report.md").read_text()
    assert "(40/100)" not in (run_dir / "report_2.md").read_text()
    assert not (run_dir / "report_3.md").exists()


def test_report_only_rerenders_under_the_next_free_name(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _run(["--tasks", "push-v3", "--run_dir", str(run_dir)], FakeStages()) == 0
    first = (run_dir / "report.md").read_bytes()
    assert runner.main(["--report_only", "--run_dir", str(run_dir)]) == 0
    assert runner.main(["--report_only", "--run_dir", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_bytes() == first
    assert "already held `report.md`, `report_2.md`" in (run_dir / "report_3.md").read_text()
    assert capsys.readouterr().out.strip().endswith("report_3.md")
    assert report.next_free_index(run_dir) == 4
    with pytest.raises(SystemExit):
        runner.main(["--report_only", "--run_dir", str(run_dir), "--tasks", "push-v3"])


def test_multitask_run_trains_one_policy_and_reports_per_task(tmp_path):
    run_dir = tmp_path / "run"
    fake = FakeStages()
    assert _run(["--tasks", TWO, "--multitask", "--run_dir", str(run_dir)], fake) == 0
    assert [name for _, name, _ in fake.calls] == [commands.TITLES[s] for s in commands.STAGES]  # once
    assert all("--env.task_one_hot=true" in argv for _, name, argv in fake.calls if name != commands.TITLES["sft"])
    text = (run_dir / "report.md").read_text()
    assert "Multi-task mode: ONE policy trained on all 2 tasks" in text
    assert "this 2-task policy trains 2000 SFT steps and 500 PI-RL updates (2 times the recipe's)" in text
    assert "| push-v3 | 40.0 % [30.9, 49.8] (40/100) | 70.0 % [60.4, 78.1] (70/100) | +30.0 | shared | shared |" in text
    assert "| +20.0 (mean) | shared | shared |" in text
    assert "The one multi-task policy: 3000 PI-RL env steps over all tasks" in text
    # Training-episode success per task from the learner's per-task windows.
    assert "| pick-place-v3 | 22.5 % | 30.0 % | 3 |" in text
    assert "### multitask" in text


def test_training_success_starts_at_the_first_full_window():
    """The first episodes to finish are the short (often successful) ones: the report's first training-success
    value is the first one over a full window of episodes, and there is none while the window is not full."""
    curve = [(100.0, 1.0, 3.0), (200.0, 0.8, 99.0), (300.0, 0.4, 100.0), (400.0, 0.5, 100.0)]
    assert report.first_full_window(curve) == 0.4
    assert report.first_full_window(curve[:2]) is None
    assert report.first_full_window([(1.0, 1.0, float("nan"))]) is None  # a run logged before the count existed
