"""The demo's stages in order, and its command line (`python -m lerobot_policy_pi_rl.demo`, `make demo`).

Stages (each one a real command of this package or of LeRobot, run as a subprocess and quoted in the report):
  1. record a few scripted demonstrations as a local LeRobotDataset;
  2. SFT of a `pi_rl` flow_mlp policy with LeRobot's own `lerobot-train`;
  3. evaluate the SFT policy (deterministic ODE sampling, fixed seeds);
  4. PI-RL fine-tuning with `lerobot-pi-rl-train` (a learner and actor processes over gRPC); with
     `--offline_ratio R`, every PPO minibatch also carries the demonstrations of stage 1 (a share R of its rows);
  5. evaluate the fine-tuned policy with the same protocol;
  6. write `report.md` + `learning_curve.png` under the run directory.
Optionally (`--with_sac`), LeRobot's SAC on the same env, demonstrations and env-step budget, on the same plot
(`python -m lerobot_policy_pi_rl.baselines.sac`, which records its own training and evaluation stages).

Every stage's command and wall time go to `<run_dir>/stages.json` as it ends, and the report is written as soon
as the PI-RL evaluation is done (again after SAC), so a failed or interrupted later stage loses nothing.
`python -m lerobot_policy_pi_rl.demo --report_only --run_dir <run_dir>` re-renders the report from the run
directory, e.g. after `python -m lerobot_policy_pi_rl.baselines.sac --run_dir <run_dir> --demos <run_dir>/demos
--env_steps N` added a SAC baseline separately.

The console shows each stage's progress (PI-RL: one line per update); `PI_RL_LOG_LEVEL=DEBUG` puts the full
detail of the RL processes on it too (their log files, `pi_rl/logs/` and `sac/logs/`, always keep it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ..runtime.console import console_level
from .report import format_success, last_env_steps, read_evals, read_metrics, rebuild_report, write_report
from .settings import ADVANTAGES, BACKBONE_RECIPES, BACKBONES, VARIANTS, DemoSettings, env_flags
from .stages import console_script, evaluate, ppo_flags, quiet_datasets_env, run_recording_stage, run_stage

SAC_BASELINE_MODULE = "lerobot_policy_pi_rl.baselines.sac"
# The repo id of the demonstration dataset (a local folder: the id only names it), for SFT and the offline source.
DEMO_REPO_ID = "local/pickcube"
PI_RL_STAGE = "PI-RL (lerobot-pi-rl-train: learner + actors over gRPC)"


def record(settings: DemoSettings) -> Path:
    out = settings.run_dir / "demos"
    run_stage(
        settings,
        "record demonstrations",
        [
            sys.executable, "-m", "lerobot_policy_pi_rl.scripts.record_demos",
            "--output_dir", str(out),
            "--num_episodes", str(settings.demo_episodes),
            "--action_noise", str(settings.demo_action_noise),
            "--seed", str(settings.seed),
            *env_flags(settings.recipe.env_options, prefix="--"),
        ],
        env=quiet_datasets_env(),
    )
    return out


def sft(settings: DemoSettings, demos: Path) -> Path:
    out = settings.run_dir / "sft"
    run_stage(
        settings,
        "SFT (lerobot-train)",
        [
            console_script("lerobot-train"),
            *settings.recipe.sft_policy_args,
            f"--policy.variant.type={settings.variant}",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            f"--dataset.repo_id={DEMO_REPO_ID}",
            f"--dataset.root={demos}",
            f"--steps={settings.sft_steps}",
            f"--batch_size={settings.sft_batch_size}",
            f"--save_freq={settings.sft_steps}",
            "--log_freq=200",
            "--num_workers=0",
            f"--seed={settings.seed}",
            "--wandb.enable=false",
            f"--output_dir={out}",
        ],
    )
    return out / "checkpoints" / "last" / "pretrained_model"


def offline_flags(ratio: float, loss_weight: float, *, repo_id: str, root: Path) -> list[str]:
    """`lerobot-pi-rl-train` flags that mix the dataset `repo_id` at `root` (the demonstrations SFT trained on) into
    every PPO update at `ratio` with `loss_weight`; none at ratio 0 (plain PPO)."""
    if ratio == 0:
        return []
    return [
        f"--algorithm.offline.repo_ids=[{repo_id}]",
        f"--algorithm.offline.roots=[{root}]",
        f"--algorithm.offline.ratio={ratio}",
        f"--algorithm.offline.loss_weight={loss_weight}",
    ]


def pi_rl(settings: DemoSettings, sft_model: Path, demos: Path | None = None) -> Path:
    """`demos`: the dataset SFT trained on (default `<run_dir>/demos`), mixed in when `settings.offline_ratio` > 0."""
    out = settings.run_dir / "pi_rl"
    run_stage(
        settings,
        PI_RL_STAGE,
        [
            console_script("lerobot-pi-rl-train"),
            f"--policy.path={sft_model}",
            "--policy.device=cpu",
            *settings.recipe.rl_policy_args,
            f"--policy.variant.type={settings.variant}",
            *settings.recipe.rl_variant_args.get(settings.variant, ()),
            *(
                [
                    f"--policy.variant.noise_level={settings.noise_level}",
                    f"--policy.variant.noise_level_final={settings.noise_level_final}",
                    f"--policy.variant.noise_anneal_updates={settings.noise_anneal_updates}",
                ]
                if settings.variant == "flow_sde"
                else []
            ),
            "--env.type=pi_rl_pickcube",
            *env_flags(settings.recipe.env_options, prefix="--env."),
            "--algorithm.type=pi_rl",
            f"--algorithm.advantage.type={settings.advantage}",
            *([f"--algorithm.advantage.group_size={settings.grpo_group_size}"] if settings.advantage == "grpo" else []),
            *ppo_flags(rollout_chunks=settings.rollout_chunks, actor_lr=settings.actor_lr,
                       critic_lr=settings.critic_lr, update_epochs=settings.update_epochs,
                       critic_warmup_updates=settings.critic_warmup_updates, minibatch_size=settings.minibatch_size),
            *offline_flags(settings.offline_ratio, settings.offline_loss_weight, repo_id=DEMO_REPO_ID,
                           root=demos or settings.run_dir / "demos"),
            f"--num_updates={settings.rl_updates}",
            f"--n_envs={settings.n_envs}",
            f"--num_actors={settings.num_actors}",
            "--checkpoint_every_updates=10",
            f"--seed={settings.seed}",
            *([f"--policy.actor_learner_config.learner_port={settings.learner_port}"]
              if settings.learner_port is not None else []),
            "--wandb.enable=false",
            f"--output_dir={out}",
        ],
    )
    return out


def sac_baseline(settings: DemoSettings, demos: Path, env_steps: int) -> None:
    """LeRobot's SAC on the same env, demonstrations and env-step budget: its runner trains it and evaluates it with
    the same protocol as stages of this run directory (`sac/`, `eval_sac.json`)."""
    run_recording_stage(
        settings,
        "SAC baseline",
        [
            sys.executable, "-m", SAC_BASELINE_MODULE,
            "--run_dir", str(settings.run_dir),
            "--demos", str(demos),
            "--env_steps", str(env_steps),
        ],
    )


def run_name(settings: DemoSettings) -> str:
    """`flow_noise` for the default backbone (as before), `smolvla_flow_noise` for another one."""
    return settings.variant if settings.backbone == "flow_mlp" else f"{settings.backbone}_{settings.variant}"


def parse_args(argv: list[str] | None = None) -> DemoSettings:
    defaults = DemoSettings()
    p = argparse.ArgumentParser(prog="python -m lerobot_policy_pi_rl.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=BACKBONES, default=os.environ.get("BACKBONE") or defaults.backbone,
                   help="flow_mlp: this package's small flow policy (about 20 min); smolvla: LeRobot's SmolVLA at "
                        "debug size (instruction, camera, state; about 45 min)")
    p.add_argument("--variant", choices=VARIANTS, default=os.environ.get("VARIANT") or None,
                   help="default per backbone: " + ", ".join(f"{k} {r.default_variant}"
                                                             for k, r in BACKBONE_RECIPES.items()))
    p.add_argument("--run_dir", type=Path, default=None, help="default: outputs/demo_<variant>_<timestamp> (demo_smolvla_<variant>_<timestamp> for --backbone smolvla)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("--with_sac", action="store_true", help="also run LeRobot's SAC baseline")
    p.add_argument("--advantage", choices=ADVANTAGES, default=defaults.advantage,
                   help="gae: PPO with a critic; grpo: critic-free, groups of --grpo_group_size episodes")
    for name in ("sft_steps", "sft_batch_size"):
        p.add_argument(f"--{name}", type=int, default=None, help="default per backbone")
    for name in ("seed", "demo_episodes", "eval_episodes", "eval_workers",
                 "rollout_chunks", "n_envs", "num_actors", "critic_warmup_updates", "noise_anneal_updates",
                 "grpo_group_size"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("demo_action_noise", "critic_lr", "noise_level", "noise_level_final"):
        p.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    p.add_argument("--rl_updates", type=int, default=None, help="default per backbone and variant: " + "; ".join(
        f"{k} {r.rl_updates}" for k, r in BACKBONE_RECIPES.items()))
    p.add_argument("--actor_lr", type=float, default=None, help="default per backbone and variant: " + "; ".join(
        f"{k} {r.actor_lr}" for k, r in BACKBONE_RECIPES.items()))
    p.add_argument("--offline_ratio", type=float, default=defaults.offline_ratio,
                   help="share of each PPO minibatch's rows drawn from the demonstrations (their flow-matching "
                        "loss joins the PPO losses), in [0, 1); 0: plain PPO")
    p.add_argument("--offline_loss_weight", type=float, default=defaults.offline_loss_weight,
                   help="weight of that flow-matching loss (with --offline_ratio > 0)")
    args = p.parse_args(argv)
    for name in ("rl_updates", "sft_steps", "sft_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)} must be >= 1")
    try:
        console_level()  # every stage reads it: a bad value fails here, before the first one
    except ValueError as err:
        p.error(str(err))
    try:
        settings = DemoSettings(**{k: v for k, v in vars(args).items() if k not in ("run_dir", "overwrite")})
    except ValueError as err:
        p.error(f"--{err}")
    # A fresh directory per run by default, so a second `make demo` never overwrites the first one's report.
    settings.run_dir = args.run_dir or Path("outputs") / f"demo_{run_name(settings)}_{time.strftime('%Y%m%d-%H%M%S')}"
    if settings.run_dir.exists():
        if not args.overwrite:
            raise SystemExit(
                f"[demo] {settings.run_dir} already exists: pass --overwrite (DEMO_ARGS=--overwrite with make) "
                "or choose another --run_dir"
            )
        shutil.rmtree(settings.run_dir)
    return settings


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--report_only" in argv:
        p = argparse.ArgumentParser(prog="python -m lerobot_policy_pi_rl.demo",
                                    description="Re-render the report of an existing demo run directory.")
        p.add_argument("--report_only", action="store_true")
        p.add_argument("--run_dir", type=Path, required=True)
        report = rebuild_report(p.parse_args(argv).run_dir)
        print(f"[demo] report: {report}")
        return 0
    settings = parse_args(argv)
    settings.run_dir.mkdir(parents=True)
    start = time.perf_counter()
    print(f"[demo] run directory: {settings.run_dir} (backbone {settings.backbone}, variant {settings.variant})",
          flush=True)
    demos = record(settings)
    sft_model = sft(settings, demos)
    evals = {"sft": evaluate(settings, "sft", sft_model)}
    rl_dir = pi_rl(settings, sft_model, demos)
    evals["pi_rl"] = evaluate(settings, "pi_rl", rl_dir / "checkpoints" / "last" / "pretrained_model")
    curves = {"pi_rl": read_metrics(rl_dir / "metrics.jsonl")}
    # The PI-RL report first: a failing or interrupted SAC stage must not cost it.
    write_report(settings, evals, curves, time.perf_counter() - start)
    if settings.with_sac:
        sac_baseline(settings, demos, env_steps=last_env_steps(curves["pi_rl"]))
        evals = read_evals(settings.run_dir)
        curves["sac"] = read_metrics(settings.run_dir / "sac" / "metrics.jsonl")
    total = time.perf_counter() - start
    report = write_report(settings, evals, curves, total)
    latest = settings.run_dir.parent / f"demo_{run_name(settings)}_latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(settings.run_dir.resolve(), target_is_directory=True)
    print(f"\n[demo] SFT success {format_success(evals['sft'])} -> PI-RL success {format_success(evals['pi_rl'])}")
    print(f"[demo] total wall time {total / 60:.1f} min; report: {report}")
    return 0
