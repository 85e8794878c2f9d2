"""The benchmark's one recipe and its task sets.

Every task is trained and evaluated with the same `BenchmarkRecipe`: there is deliberately no way to set a value
for one task only (no per-task field, flag or file), so a table over tasks compares tasks, not tunings. Only the
scale of the whole recipe can change from the command line (`SCALE_FIELDS`, for smoke and CI runs); the report
labels such a run as not the benchmark recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..demo.settings import VARIANTS
from ..envs.metaworld import MT10_TASKS, parse_tasks
from ..validation import require

# The development set the recipe is tuned on (MetaWorld v3 names; the scripted experts succeed on nearly every
# episode of these).
DEV_TASKS = ("push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "button-press-topdown-v3")
TASK_SETS = ("dev", "mt10")

# The recipe fields the command line may change (on every task alike).
SCALE_FIELDS = ("demo_episodes", "sft_steps", "rl_updates", "eval_episodes")


@dataclass(frozen=True)
class BenchmarkRecipe:
    """Demonstrations -> SFT -> PI-RL -> evaluation, the same for every task. Values are scalars only."""

    # Scripted-expert demonstrations per task (MetaWorld's own policies) and the Gaussian noise on their actions.
    # SFT success on 50 episodes (1000 steps) with 3 / 10 demonstrations: push 28 / 55 %, pick-place 6 / 44 %,
    # door-open 68 / 98 %, drawer-open 100 / 100 %, button-press-topdown 88 / 100 %. PI-RL (150-step training
    # episodes) took push from 55 to 89 % in 80 updates, but from 27 % (3 demonstrations) it stayed flat (34 %
    # after 100 updates; also with target_kl 0.05): 10 it is, until the dev-set table says otherwise.
    demo_episodes: int = 10
    demo_action_noise: float = 0.1
    # The policy: this package's flow_mlp backbone on the state, with this exploration variant.
    backbone: str = "flow_mlp"
    variant: str = "flow_noise"
    # Action chunk length H and executed steps C <= H; None keeps the policy's defaults.
    chunk_size: int | None = None
    n_action_steps: int | None = None
    # SFT with `lerobot-train`.
    sft_steps: int = 1000
    sft_batch_size: int = 64
    # PI-RL with `lerobot-pi-rl-train`: PPO updates, parallel envs per actor process, actor processes. On the dev
    # set, 100 updates added 21 / 9 points on push / pick-place and 250 added 41 / 29; since actors wait for new
    # weights after a rollout's rows, 250 fit in 20 minutes per task (17.8-19.3 min on 2 cores).
    rl_updates: int = 250
    n_envs: int = 8
    num_actors: int = 2
    # Chunk steps collected per PPO update (over all envs), minibatch size and epochs per update.
    rollout_chunks: int = 256
    minibatch_size: int = 64
    update_epochs: int = 4
    actor_lr: float = 3e-6
    critic_lr: float = 1e-3
    # Step limit of PI-RL's training episodes (a truncation, bootstrapped by the critic). Evaluation always runs
    # MetaWorld's own 500-step limit. Cut at 150, a PPO update of 1280 env steps sees ~10 episodes instead of ~5
    # (failures otherwise run the full 500) and push-v3 went 55 -> 89 % in 80 updates, where the 500-step
    # training episodes gave 55 -> 63 % in 120 (a 4x larger rollout: 66 %).
    train_episode_length: int = 150
    # PPO updates that train only the critic before the actor moves.
    critic_warmup_updates: int = 0
    # Flow-SDE's noise level a (only passed with variant flow_sde).
    noise_level: float = 0.5
    # Evaluation protocol: deterministic ODE sampling, this many episodes per task from env seed `eval_seed` on
    # (the same episodes for SFT and PI-RL), split over `eval_workers` processes (same results as one).
    eval_episodes: int = 100
    eval_seed: int = 100_000
    eval_workers: int = 2

    def __post_init__(self) -> None:
        require(self.backbone == "flow_mlp",
                f"backbone={self.backbone!r} is not supported by the benchmark; allowed: flow_mlp (the state-only "
                "MetaWorld env gives no image or instruction a VLA backbone would need)")
        require(self.variant in VARIANTS, f"variant={self.variant!r} is not valid; allowed: {', '.join(VARIANTS)}")
        for name in ("demo_episodes", "sft_steps", "sft_batch_size", "rl_updates", "n_envs", "num_actors",
                     "rollout_chunks", "minibatch_size", "update_epochs", "eval_episodes", "eval_workers"):
            require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        for name in ("chunk_size", "n_action_steps"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name}={value} must be >= 1 (or None: the policy's default)")
        require(1 <= self.train_episode_length <= 500,
                f"train_episode_length={self.train_episode_length} must be in 1..500 (MetaWorld's own limit)")
        require(self.demo_action_noise >= 0, f"demo_action_noise={self.demo_action_noise} must be >= 0")
        require(self.critic_warmup_updates >= 0, f"critic_warmup_updates={self.critic_warmup_updates} must be >= 0")
        for name in ("actor_lr", "critic_lr", "noise_level"):
            require(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0")
        require(self.eval_seed >= 0, f"eval_seed={self.eval_seed} must be >= 0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> BenchmarkRecipe:
        """The recipe a run directory recorded; a field this version does not know is an error, not dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        require(not unknown, f"recorded recipe has unknown fields {unknown}; known: {', '.join(sorted(known))}")
        return cls(**record)

    def scaled(self, **values: int | None) -> BenchmarkRecipe:
        """This recipe with some `SCALE_FIELDS` changed (None: unchanged), on every task alike."""
        bad = sorted(set(values) - set(SCALE_FIELDS))
        require(not bad, f"{bad} cannot be changed from the command line; allowed: {', '.join(SCALE_FIELDS)}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def differences(self, other: BenchmarkRecipe) -> dict[str, tuple[object, object]]:
        """Field -> (this value, the other's value), for the fields that differ."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


def unit_sft_steps(recipe: BenchmarkRecipe, num_tasks: int) -> int:
    """SFT steps of a policy trained on `num_tasks` tasks: the recipe's budgets are per task, so a multi-task policy
    gets `num_tasks` times as many (with the budget per run, a five-task policy got a fifth of a single-task
    policy's steps per task, and push and pick-place stayed near 6 % after SFT)."""
    return recipe.sft_steps * num_tasks


def unit_rl_updates(recipe: BenchmarkRecipe, num_tasks: int) -> int:
    """PI-RL updates of a policy trained on `num_tasks` tasks: per task, as SFT steps are. Each update's rollout is
    shared by the tasks, so this keeps the env steps per task of a single-task run."""
    return recipe.rl_updates * num_tasks


def multitask_n_envs(recipe: BenchmarkRecipe, num_tasks: int) -> int:
    """Envs per actor of a multi-task PI-RL run: the recipe's `n_envs` rounded up to a multiple of the task count
    (every actor steps each task on the same number of envs)."""
    return -(-recipe.n_envs // num_tasks) * num_tasks


def task_set(name: str) -> tuple[str, ...]:
    """`dev`: the development set; `mt10`: MetaWorld's MT10 names (the env's own set)."""
    if name == "dev":
        return DEV_TASKS
    if name == "mt10":
        return MT10_TASKS
    raise ValueError(f"task_set={name!r} is not valid; allowed: {', '.join(TASK_SETS)}")


def check_tasks(tasks: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The task list, refused (by the env's own parser) when empty, repeated or naming a task MetaWorld lacks."""
    return parse_tasks(",".join(tasks))
