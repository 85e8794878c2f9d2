"""The benchmark's stages and the exact command each one runs, for one unit: one task (single-task mode) or the
whole task list trained as one policy (multi-task mode, the task as a one-hot in the state).

Stages in order, each a real command of this package or of LeRobot run as a subprocess, with its output under
the unit's directory:
  demos       scripted-expert demonstrations as a local LeRobotDataset   -> demos/
  sft         SFT with `lerobot-train`                                    -> sft/
  eval_sft    evaluation of the SFT policy                                -> eval_sft.json
  pi_rl       PI-RL with `lerobot-pi-rl-train` (learner + actors)         -> pi_rl/
  eval_pi_rl  evaluation of the PI-RL policy                              -> eval_pi_rl.json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..demo.stages import console_script, ppo_flags
from .recipe import BenchmarkRecipe, multitask_n_envs, unit_rl_updates, unit_sft_steps

ENV_TYPE = "pi_rl_metaworld"
STAGES = ("demos", "sft", "eval_sft", "pi_rl", "eval_pi_rl")
TITLES = {
    "demos": "demonstrations",
    "sft": "SFT (lerobot-train)",
    "eval_sft": "evaluate SFT",
    "pi_rl": "PI-RL (lerobot-pi-rl-train)",
    "eval_pi_rl": "evaluate PI-RL",
}
# What a stage writes, relative to the unit's directory (a directory or a file).
OUTPUTS = {"demos": "demos", "sft": "sft", "eval_sft": "eval_sft.json", "pi_rl": "pi_rl",
           "eval_pi_rl": "eval_pi_rl.json"}
MODEL = Path("checkpoints") / "last" / "pretrained_model"
# Intermediate PI-RL checkpoints (not part of the recipe: they change no result).
CHECKPOINT_EVERY_UPDATES = 10
MULTITASK = "multitask"


@dataclass(frozen=True)
class Unit:
    """One policy of the benchmark: trained on `tasks` (one, or all of them in multi-task mode), in `directory`."""

    name: str
    tasks: tuple[str, ...]
    directory: Path
    # Multi-task mode: the task's one-hot is appended to the state everywhere (recording, PI-RL, evaluation), so
    # the state-only policy can tell the tasks apart.
    one_hot: bool = False

    def output(self, stage: str) -> Path:
        return self.directory / OUTPUTS[stage]


def units(run_dir: Path, tasks: tuple[str, ...], *, multitask: bool) -> list[Unit]:
    """Single-task mode: one unit per task under `tasks/<task>/`; multi-task mode: one unit under `multitask/`."""
    if multitask:
        return [Unit(MULTITASK, tasks, Path(run_dir) / MULTITASK, one_hot=True)]
    return [Unit(task, (task,), Path(run_dir) / "tasks" / task) for task in tasks]


def n_envs(recipe: BenchmarkRecipe, unit: Unit) -> int:
    return multitask_n_envs(recipe, len(unit.tasks)) if unit.one_hot else recipe.n_envs


def env_args(unit: Unit) -> list[str]:
    """The env flags, the same for recording, PI-RL and evaluation."""
    flags = [f"--env.type={ENV_TYPE}", f"--env.task={','.join(unit.tasks)}"]
    return flags + (["--env.task_one_hot=true"] if unit.one_hot else [])


def record_command(recipe: BenchmarkRecipe, unit: Unit, seed: int) -> list[str]:
    """`--num_episodes` is per task: every task of a multi-task unit gets the same number of demonstrations."""
    return [
        sys.executable, "-m", "lerobot_policy_pi_rl.scripts.record_demos",
        *env_args(unit),
        "--output_dir", str(unit.output("demos")),
        "--num_episodes", str(recipe.demo_episodes),
        "--action_noise", str(recipe.demo_action_noise),
        "--seed", str(seed),
    ]


def sft_command(recipe: BenchmarkRecipe, unit: Unit, seed: int) -> list[str]:
    steps = unit_sft_steps(recipe, len(unit.tasks))
    return [
        console_script("lerobot-train"),
        "--policy.type=pi_rl",
        f"--policy.backbone.type={recipe.backbone}",
        f"--policy.variant.type={recipe.variant}",
        *([f"--policy.chunk_size={recipe.chunk_size}"] if recipe.chunk_size is not None else []),
        *([f"--policy.n_action_steps={recipe.n_action_steps}"] if recipe.n_action_steps is not None else []),
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--dataset.repo_id=local/metaworld_{unit.name}",
        f"--dataset.root={unit.output('demos')}",
        f"--steps={steps}",
        f"--batch_size={recipe.sft_batch_size}",
        f"--save_freq={steps}",
        "--log_freq=200",
        "--num_workers=0",
        f"--seed={seed}",
        "--wandb.enable=false",
        f"--output_dir={unit.output('sft')}",
    ]


def pi_rl_command(recipe: BenchmarkRecipe, unit: Unit, seed: int, port: int | None = None) -> list[str]:
    """`port`: the learner's loopback port; None picks a free one, so that benchmark runs (or a benchmark and any
    other PI-RL run) on one machine never meet on LeRobot's default port."""
    if port is None:
        from ..runtime.transport import free_loopback_port

        port = free_loopback_port()
    return [
        console_script("lerobot-pi-rl-train"),
        f"--policy.path={unit.output('sft') / MODEL}",
        "--policy.device=cpu",
        f"--policy.variant.type={recipe.variant}",
        *([f"--policy.variant.noise_level={recipe.noise_level}"] if recipe.variant == "flow_sde" else []),
        *env_args(unit),
        f"--env.episode_length={recipe.train_episode_length}",
        f"--policy.actor_learner_config.learner_port={port}",
        "--algorithm.type=pi_rl",
        *ppo_flags(rollout_chunks=recipe.rollout_chunks, actor_lr=recipe.actor_lr, critic_lr=recipe.critic_lr,
                   update_epochs=recipe.update_epochs, critic_warmup_updates=recipe.critic_warmup_updates,
                   minibatch_size=recipe.minibatch_size),
        f"--num_updates={unit_rl_updates(recipe, len(unit.tasks))}",
        f"--n_envs={n_envs(recipe, unit)}",
        f"--num_actors={recipe.num_actors}",
        f"--checkpoint_every_updates={CHECKPOINT_EVERY_UPDATES}",
        f"--seed={seed}",
        "--wandb.enable=false",
        f"--output_dir={unit.output('pi_rl')}",
    ]


def eval_command(recipe: BenchmarkRecipe, unit: Unit, stage: str) -> list[str]:
    """`stage`: `eval_sft` or `eval_pi_rl`. `--num_episodes` is per task (`per_task` in the result)."""
    trained = {"eval_sft": "sft", "eval_pi_rl": "pi_rl"}[stage]
    return [
        sys.executable, "-m", "lerobot_policy_pi_rl.scripts.evaluate",
        *env_args(unit),
        "--policy_path", str(unit.output(trained) / MODEL),
        "--num_episodes", str(recipe.eval_episodes),
        "--seed", str(recipe.eval_seed),
        "--workers", str(recipe.eval_workers),
        "--output", str(unit.output(stage)),
    ]


def stage_command(stage: str, recipe: BenchmarkRecipe, unit: Unit, seed: int) -> list[str]:
    if stage == "demos":
        return record_command(recipe, unit, seed)
    if stage == "sft":
        return sft_command(recipe, unit, seed)
    if stage == "pi_rl":
        return pi_rl_command(recipe, unit, seed)
    if stage in ("eval_sft", "eval_pi_rl"):
        return eval_command(recipe, unit, stage)
    raise ValueError(f"stage={stage!r} is not valid; allowed: {', '.join(STAGES)}")
