"""bench/bench_offline_mixing.py: the mixing comparison's table, its per-ratio summary, resuming, and the whole script
with real stages and tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.demo.stages import stage_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_offline_mixing.py"


@pytest.fixture(scope="module")
def mixing():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_offline_mixing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_offline_mixing"] = module
    spec.loader.exec_module(module)
    return module


def _cell(ratio, seed, steps, success=0.9, wall=60.0, finished=True, lower=None):
    return {"ratio": ratio, "seed": seed, "finished": finished, "env_steps_to_success": steps,
            "env_steps_to_lower": steps if lower is None else lower,
            "success_rate": success if finished else None, "pi_rl_wall_s": wall if finished else None}


def test_per_ratio_means_and_speed_up_against_ratio_0(mixing):
    cells = [
        _cell(0.0, 0, 4000, 0.90, 100.0, lower=3000), _cell(0.0, 1, 6000, 0.94, 140.0, lower=1000),
        _cell(0.5, 0, 2000, 0.96, 120.0), _cell(0.5, 1, 3000, 0.92, 160.0),
        # One seed never reached 90 %: no mean (a mean over the other seed alone would flatter the ratio).
        _cell(0.25, 0, 1000), _cell(0.25, 1, None, 0.5),
        # One seed did not finish: no mean either, and only the finished cell in the success mean.
        _cell(0.75, 0, 2500, 0.8), _cell(0.75, 1, None, finished=False),
    ]
    rows = {row["ratio"]: row for row in mixing.per_ratio(cells, [0.0, 0.25, 0.5, 0.75], [0, 1])}
    assert rows[0.0]["mean_env_steps_to_success"] == 5000 and rows[0.0]["speedup_vs_ratio_0"] == 1.0
    assert rows[0.5]["mean_env_steps_to_success"] == 2500 and rows[0.5]["speedup_vs_ratio_0"] == 2.0
    # The lower bar is averaged and compared on its own.
    assert rows[0.0]["mean_env_steps_to_lower"] == 2000 and rows[0.5]["speedup_lower_vs_ratio_0"] == 0.8
    assert rows[0.5]["mean_success_rate"] == pytest.approx(0.94) and rows[0.5]["mean_pi_rl_wall_s"] == 140.0
    assert (rows[0.25]["reached"], rows[0.25]["mean_env_steps_to_success"], rows[0.25]["speedup_vs_ratio_0"]) == (
        1, None, None)
    assert (rows[0.75]["finished"], rows[0.75]["mean_success_rate"]) == (1, 0.8)
    # Without ratio 0 there is nothing to compare against.
    assert mixing.per_ratio(cells, [0.5], [0, 1])[0]["speedup_vs_ratio_0"] is None


class FakeEnv:
    """The script's env interface, writing what the real stages write (no subprocess): SFT success 0.5, then per
    ratio r a training curve of updates of 100 env steps that reaches 80 % three updates before it reaches 95 %,
    after `10 * (1 - r)` updates."""

    pi_rl_stage = "PI-RL"

    def __init__(self, fail: set[tuple[int, float]] | None = None):
        self.prepared: list[int] = []
        self.trained: list[tuple[int, float]] = []
        self.fail = fail or set()

    def describe(self) -> dict:
        return {"env": "fake", "task": None, "variant": "flow_noise", "demo_episodes": 2, "sft_steps": 20,
                "rl_updates": 30, "eval_episodes": 10, "eval_seed": 100_000}

    def title(self) -> str:
        return "a fake env"

    def prepare(self, seed_dir: Path, seed: int) -> None:
        self.prepared.append(seed)
        (seed_dir / "demos" / "meta").mkdir(parents=True)
        (seed_dir / "demos" / "meta" / "info.json").write_text("{}")
        (seed_dir / "sft" / "checkpoints" / "last" / "pretrained_model").mkdir(parents=True)
        (seed_dir / "sft" / "checkpoints" / "last" / "pretrained_model" / "config.json").write_text("{}")
        (seed_dir / "eval_sft.json").write_text(json.dumps(
            {"success_rate": 0.5, "success_ci95": [0.24, 0.76], "num_episodes": 10}))

    def cell(self, seed_dir: Path, cell_dir: Path, seed: int, ratio: float, loss_weight: float) -> None:
        self.trained.append((seed, ratio))
        if (seed, ratio) in self.fail:
            raise SystemExit(f"[demo] stage 'PI-RL' failed with exit code 1 (seed {seed}, ratio {ratio})")
        before = round(10 * (1 - ratio))
        rows = [{"update": i + 1, "rollout/interaction_steps": 100 * (i + 1), "rollout/dropped_stale": i // 4,
                 "rollout/success_rate": 0.5 if i < before - 3 else 0.8 if i < before else 0.95} for i in range(30)]
        (cell_dir / "pi_rl").mkdir()
        (cell_dir / "pi_rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (cell_dir / "stages.json").write_text(json.dumps({"commands": ["train"], "timings_s": {"PI-RL": 120.0}}))
        (cell_dir / "eval_pi_rl.json").write_text(json.dumps(
            {"success_rate": 0.9, "success_ci95": [0.6, 0.98], "num_episodes": 10}))


def test_comparison_table_resume_and_a_failed_cell(mixing, tmp_path, capsys):
    out = tmp_path / "mix"
    env = FakeEnv(fail={(1, 0.5)})
    assert mixing.run(env, out, [0, 1], [0.0, 0.5], 1.0, "python bench/bench_offline_mixing.py") == 1
    assert env.prepared == [0, 1] and len(env.trained) == 4
    assert "did not finish: seed 1 ratio 0.5" in capsys.readouterr().err
    summary = json.loads((out / "comparison.json").read_text())
    cells = {(c["seed"], c["ratio"]): c for c in summary["cells"]}
    assert cells[(0, 0.0)]["env_steps_to_success"] == 1100 and cells[(0, 0.5)]["env_steps_to_success"] == 600
    assert cells[(0, 0.0)]["env_steps_to_lower"] == 800 and cells[(0, 0.5)]["env_steps_to_lower"] == 300
    assert cells[(0, 0.0)]["updates_to_success"] == 11 and cells[(0, 0.5)]["updates_to_lower"] == 3
    assert cells[(0, 0.5)]["stale_rows_dropped"] == 7  # the last metrics row's (cumulative) count
    assert cells[(0, 0.5)]["pi_rl_wall_s"] == 120.0 and not cells[(1, 0.5)]["finished"]
    first = (out / "comparison.md").read_text()
    assert ("| 0.5 | 0 | 50.0 % [24.0, 76.0] | 600 | 300 | 6 | 3 | 3,000 | 7 | 90.0 % [60.0, 98.0] (10 ep) | "
            "2.0 min |") in first
    assert "| 0.5 | 1 | 50.0 % [24.0, 76.0] | - | - | - | - | - | - | not finished | - |" in first
    assert "| 0.5 | 1/2 | 1/2 | - | - | 1/2 | - | - | - | - | 90.0 % | 2.0 min |" in first

    # Resumed: only the failed cell runs again; the first comparison stays as it was.
    env = FakeEnv()
    assert mixing.run(env, out, [0, 1], [0.0, 0.5], 1.0, "python bench/bench_offline_mixing.py") == 0
    assert env.prepared == [] and env.trained == [(1, 0.5)]
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3
    assert (out / "comparison.md").read_text() == first
    rows = {r["ratio"]: r for r in json.loads((out / "comparison_2.json").read_text())["per_ratio"]}
    assert rows[0.0]["mean_env_steps_to_success"] == 1100 and rows[0.5]["mean_env_steps_to_success"] == 600
    assert rows[0.5]["speedup_vs_ratio_0"] == pytest.approx(1100 / 600)
    assert rows[0.5]["mean_updates_to_success"] == 6 and rows[0.0]["mean_updates_to_lower"] == 8
    assert "| 0.5 | 2/2 | 2/2 | 600 | 1.83x | 2/2 | 300 | 2.67x | 6 | 3 | 90.0 % | 2.0 min |" in (
        out / "comparison_2.md").read_text()

    # Other budgets on the same directory are refused, naming what changed; nothing is written.
    class Longer(FakeEnv):
        def describe(self) -> dict:
            return {**super().describe(), "rl_updates": 60}

    with pytest.raises(SystemExit, match="rl_updates: recorded 30, now 60"):
        mixing.run(Longer(), out, [0], [0.0], 1.0, "")
    with pytest.raises(SystemExit, match="offline_loss_weight: recorded 1.0, now 0.5"):
        mixing.run(FakeEnv(), out, [0], [0.0], 0.5, "")
    assert not (out / "comparison_3.md").exists()


def test_a_cell_without_its_sft_checkpoint_is_not_silently_retrained(mixing, tmp_path, capsys):
    out = tmp_path / "mix"
    assert mixing.run(FakeEnv(), out, [0], [0.0], 1.0, "") == 0
    (out / "seed_0" / "eval_sft.json").unlink()
    env = FakeEnv()
    assert mixing.run(env, out, [0], [0.0], 1.0, "") == 1
    assert env.prepared == [] and "cells trained from them exist (ratios 0)" in capsys.readouterr().err
    assert (out / "seed_0" / "ratio_0" / "eval_pi_rl.json").is_file()


@pytest.mark.parametrize(("argv", "named"), [
    (["--ratios", "0", "1"], "ratio 1 must be in [0, 1)"),
    (["--ratios", "0", "0"], "--ratios 0.0 0.0 repeats a value"),
    (["--rl_updates", "0"], "--rl_updates=0"),
    (["--loss_weight", "-1"], "--loss_weight=-1.0"),
    (["--task", "push-v3"], "--task='push-v3' goes with --env metaworld"),
    (["--env", "metaworld"], "--task=None goes with --env metaworld"),
])
def test_bad_flags_are_refused_naming_the_value(mixing, tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit):
        mixing.main([*argv, "--out", str(tmp_path / "mix")])
    assert named in capsys.readouterr().err
    assert not (tmp_path / "mix").exists()


def test_metaworld_cells_train_from_the_seeds_sft_with_its_demonstrations_mixed_in(mixing, tmp_path, monkeypatch):
    """`--env metaworld`: the benchmark runner's commands; a cell's PI-RL starts from the seed's SFT checkpoint,
    writes into the cell and mixes the seed's demonstrations under the repo id SFT used; the config parses."""
    from lerobot_policy_pi_rl.runtime.cli import load_config

    commands = []
    monkeypatch.setattr(mixing, "run_logged_stage", lambda log, name, argv, env=None: commands.append(argv))
    env = mixing.MetaWorld("push-v3", {"rl_updates": 3, "demo_episodes": None, "sft_steps": None,
                                       "eval_episodes": None})
    seed_dir, cell_dir = tmp_path / "seed_1", tmp_path / "seed_1" / "ratio_0.25"
    cell_dir.mkdir(parents=True)
    env.cell(seed_dir, cell_dir, 1, 0.25, 0.5)
    rl, evaluation = commands
    assert f"--policy.path={seed_dir / 'sft' / 'checkpoints' / 'last' / 'pretrained_model'}" in rl
    assert f"--output_dir={cell_dir / 'pi_rl'}" in rl and "--num_updates=3" in rl and "--seed=1" in rl
    assert evaluation[evaluation.index("--output") + 1] == str(cell_dir / "eval_pi_rl.json")
    cfg = load_config([a for a in rl[1:] if not a.startswith("--policy.path")] + ["--policy.type=pi_rl"])
    assert (cfg.algorithm.offline.repo_ids, cfg.algorithm.offline.roots, cfg.algorithm.offline.ratio) == (
        ["local/metaworld_push-v3"], [str(seed_dir / "demos")], 0.25)
    assert cfg.algorithm.offline.loss_weight == 0.5
    with pytest.raises(ValueError, match="push-v9"):
        mixing.MetaWorld("push-v9", {})


TINY = ["--seeds", "0", "--ratios", "0.5", "--demo_episodes", "2", "--sft_steps", "20", "--rl_updates", "2",
        "--eval_episodes", "4"]


def _script(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *TINY], env=stage_env(),
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_the_whole_comparison_with_tiny_budgets_then_a_resume_that_redoes_nothing(tmp_path):
    """Real stages: the demo's recording, SFT and evaluation once, then PI-RL at ratio 0.5 from that SFT checkpoint,
    evaluated; a second invocation finds the cell finished. (Ratio 0 runs the demo's plain PI-RL command, which
    test_demo_report checks; the table over several ratios is checked above without subprocesses.)"""
    out = tmp_path / "mix"
    done = _script(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "comparison.json").read_text())
    assert [(c["seed"], c["ratio"]) for c in summary["cells"]] == [(0, 0.5)]
    for cell in summary["cells"]:
        assert cell["finished"] and cell["num_episodes"] == 4 and cell["pi_rl_updates"] == 2
        assert cell["pi_rl_env_steps"] > 0 and cell["pi_rl_wall_s"] > 0
        assert cell["env_steps_to_success"] is None  # 2 updates cannot hold 90 % for 10
    assert [r["ratio"] for r in summary["per_ratio"]] == [0.5]
    table = (out / "comparison.md").read_text()
    assert "| 0.5 | 0 |" in table and "(4 ep)" in table
    # The learner trained on the seed's demonstrations too.
    mixed = json.loads((out / "seed_0" / "ratio_0.5" / "stages.json").read_text())["commands"]
    assert f"--algorithm.offline.roots=[{out / 'seed_0' / 'demos'}]" in mixed[0]
    rows = [json.loads(line) for line in (out / "seed_0" / "ratio_0.5" / "pi_rl" / "metrics.jsonl").open()]
    assert all(row["loss/offline_fm"] > 0 for row in rows)

    first = (out / "comparison.md").read_bytes()
    again = _script(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 1 and "===" not in again.stdout
    assert (out / "comparison.md").read_bytes() == first
    assert json.loads((out / "comparison_2.json").read_text())["cells"] == summary["cells"]
