"""`PiRLTrainRLServerPipelineConfig`: LeRobot's actor/learner config plus what PI-RL's runtime needs.

Same CLI/JSON shape as `lerobot.rl.learner` / `lerobot.rl.actor` (`--policy.*`, `--env.*`, `--algorithm.*`,
`--output_dir`, `--resume`, `--wandb.*`, `--config_path`), plus the fields below. `validate()` replaces
LeRobot's so that this plugin does not inherit upstream bugs of LeRobot 0.6.1 (listed for users in
docs/recipes.md, "LeRobot behaviours this package works around"):
  * no offline dataset (`dataset: null`) is valid (upstream dereferences `dataset.repo_id`);
  * `push_to_hub` without a `repo_id` is turned off with a warning instead of failing;
  * actor and learner may share `output_dir` (upstream raises FileExistsError); the learner alone guards
    against overwriting a run (`checkpoints/last` exists and resume is false);
  * `resume=true` needs no `--config_path`: the learner resumes from `<output_dir>/checkpoints/last`;
  * `env.processor.reset` (a field typed `Any`) is encoded by hand, so logging and checkpoints work.
"""

import dataclasses
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import torch

from lerobot.configs import parser
from lerobot.configs.train import TRAIN_CONFIG_NAME
from lerobot.rl.algorithms.factory import make_algorithm_config
from lerobot.rl.train_rl import TrainRLServerPipelineConfig

from ..configuration_pi_rl import PiRLConfig, drop_removed_fields, load_policy_config
from ..validation import require
from .transport import TransportSecurityConfig, check_network_exposure, is_loopback

ALGORITHMS = ("pi_rl", "sac")


@dataclass(kw_only=True)
class PiRLTrainRLServerPipelineConfig(TrainRLServerPipelineConfig):
    # PPO updates the learner runs before it checkpoints, tells the actors to stop, and exits.
    num_updates: int = 100
    # Checkpoint every N updates (and always after the last one); 0 keeps only the final checkpoint.
    checkpoint_every_updates: int = 10
    # Parallel environments per actor process; each is one stream (stream_id = actor_index * 65536 + env index).
    n_envs: int = 1
    # Actor processes `lerobot-pi-rl-train` starts (the learner serves all of them).
    num_actors: int = 1
    # Index of this actor process among `num_actors` (set by `lerobot-pi-rl-train`; makes stream ids unique).
    actor_index: int = 0
    # Print a console progress line every N updates.
    console_log_every_updates: int = 1
    # Stop the learner with an error after this many consecutive updates in which some optimizer step was skipped
    # for a non-finite log-prob, value, loss or gradient (`numerics/steps_skipped` > 0): a run that keeps producing
    # NaN/inf is not learning. 0 never stops.
    max_consecutive_skipped_updates: int = 3
    # Actor: keep retrying a lost learner for this many seconds before giving up (covers learner restarts).
    reconnect_timeout_s: float = 120.0
    # Actor: stop after this many chunk steps per env (0 = run until the learner says training is done).
    actor_max_chunks: int = 0
    # Actor back-pressure (GAE advantages): once an actor has sent `algorithm.rollout_chunks` rows with one policy
    # version (a whole rollout on its own), it waits for the learner's next weights, for at most this many seconds,
    # then sends another rollout's worth. Without it, actors faster than the learner's updates queue up rows that
    # age past `algorithm.staleness` before the learner reads them: on MetaWorld button-press-topdown the learner
    # dropped 4 of every 5 rows unread by update 100 and waited 8 s per update for fresh ones. 0 never waits. GRPO
    # runs never wait (a group's rows can span more than one rollout).
    actor_wait_for_weights_s: float = 30.0
    # Torch intra-op CPU threads of each process (learner, every actor). 0 = auto: the machine's cores shared
    # by the learner and the `num_actors` actors (cores // (num_actors + 1), at least 1), so the processes of a
    # one-machine run do not oversubscribe the CPU (busy-waiting OpenMP threads slow every env step).
    torch_threads: int = 0
    # Learner started as N > 1 data-parallel ranks (torchrun, accelerate launch): shard the frozen VLM of a VLA
    # backbone (`freeze_vlm=true`) over the ranks with FSDP2, so that each rank holds about 1/N of it; the
    # trainable weights stay whole on every rank. Refused on one learner process, on a backbone without a frozen
    # VLM and with offline mixing (docs/scaling.md, "A data-parallel learner"). Actors ignore it.
    shard_frozen: bool = False
    # TLS and a shared token on the actor <-> learner gRPC link (below). Required when `learner_host` is not a
    # loopback address.
    security: TransportSecurityConfig = field(default_factory=TransportSecurityConfig)
    # Actors save the episodes they finish as LeRobotDatasets, one per actor process under
    # `<rollouts_root>/actor_<i>` (observations, executed actions, reward, done/success/intervention flags, policy
    # version), each by a writer process as it ends; the datasets are finalized when the actors stop (also on
    # Ctrl-C), and an episode still running then is dropped.
    record_rollouts: bool = False
    # Folder of the rollout datasets (default `<output_dir>/rollouts`); its `actor_<i>` folders must not exist yet
    # (or be empty).
    rollouts_root: Path | None = None
    # Repo id written into each rollout dataset's metadata (the folder locates the data).
    rollouts_repo_id: str = "local/rollouts"
    # Learner: reject an actor message (one chunk step of one actor's envs) larger than this many bytes before
    # decoding it (counted under rollout/rejected_messages/oversized). 0 = no limit.
    max_message_bytes: int = 256 * 1024 * 1024

    def validate(self) -> None:
        policy_path = parser.get_path_arg("policy")
        if policy_path:
            overrides = parser.get_yaml_overrides("policy") + (parser.get_cli_overrides("policy") or [])
            self.policy = load_policy_config(policy_path, cli_overrides=overrides)
            self.policy.pretrained_path = Path(policy_path)
        require(self.policy is not None, "policy is not set: pass --policy.type=pi_rl (or --policy.path=<dir>)")
        require(self.env is not None, "env is not set: pass --env.type=... (e.g. pi_rl_pickcube, gym_manipulator)")
        if self.algorithm is None:
            self.algorithm = make_algorithm_config("pi_rl" if isinstance(self.policy, PiRLConfig) else "sac")
        require(
            self.algorithm.type in ALGORITHMS,
            f"algorithm.type={self.algorithm.type!r} is not supported; allowed: {', '.join(ALGORITHMS)}",
        )
        if self.algorithm.type == "pi_rl":
            require(
                isinstance(self.policy, PiRLConfig),
                f"algorithm.type=pi_rl needs policy.type=pi_rl, got policy.type={self.policy.type!r}",
            )
            for role in ("actor", "learner"):
                value = getattr(self.policy.concurrency, role)
                require(
                    value == "threads",
                    f"policy.concurrency.{role}={value!r}: a pi_rl run runs LeRobot's transport workers as "
                    "threads; only 'threads' is supported",
                )
        else:
            require(
                not isinstance(self.policy, PiRLConfig),
                f"algorithm.type={self.algorithm.type} needs its own policy config (LeRobot's SAC runs "
                "policy.type=gaussian_actor), got policy.type=pi_rl",
            )
        if getattr(self.algorithm, "policy_config", None) is None:
            self.algorithm.policy_config = self.policy
        for name in ("num_updates", "n_envs", "num_actors", "console_log_every_updates"):
            require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        for name in ("checkpoint_every_updates", "actor_max_chunks", "actor_index", "torch_threads",
                     "max_consecutive_skipped_updates", "max_message_bytes"):
            require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        require(
            self.actor_index < self.num_actors,
            f"actor_index={self.actor_index} must be < num_actors={self.num_actors}",
        )
        require(self.reconnect_timeout_s > 0, f"reconnect_timeout_s={self.reconnect_timeout_s} must be > 0")
        require(self.actor_wait_for_weights_s >= 0,
                f"actor_wait_for_weights_s={self.actor_wait_for_weights_s} must be >= 0")
        if self.env.type == "gym_manipulator":
            require(self.n_envs == 1, f"n_envs={self.n_envs}: env.type=gym_manipulator drives one robot, use 1")
        port = self.policy.actor_learner_config.learner_port
        require(0 < port < 65536, f"policy.actor_learner_config.learner_port={port} must be in 1..65535")
        self.validate_security()
        if self.shard_frozen:
            self.validate_shard_frozen()

        if not self.job_name:
            self.job_name = f"{self.env.type}_{self.policy.type}"
        if not self.output_dir:
            now = dt.datetime.now()
            self.output_dir = Path("outputs/train") / f"{now:%Y-%m-%d}/{now:%H-%M-%S}_{self.job_name}"
        self.output_dir = Path(self.output_dir)
        self.validate_recording()
        if self.use_policy_training_preset and not self.resume:
            self.optimizer = self.policy.get_optimizer_preset()
            self.scheduler = self.policy.get_scheduler_preset()
        if getattr(self.policy, "push_to_hub", False):
            # Neither this runtime nor LeRobot's RL learner pushes (only `lerobot-train` does); off without a
            # repo_id, so that a checkpoint reused for SFT does not demand one.
            logging.warning(
                "policy.push_to_hub=true: the RL learner does not push to the hub; upload "
                "<output_dir>/checkpoints/last/pretrained_model yourself"
            )
            if not self.policy.repo_id:
                self.policy.push_to_hub = False

    def validate_shard_frozen(self) -> None:
        """`shard_frozen` needs a pi_rl VLA backbone whose VLM is frozen; the offline SFT term runs the VLM on rank
        0 alone, which sharded weights (gathered by all ranks together) do not allow."""
        backbone = getattr(self.policy, "backbone", None)
        require(
            backbone is not None and getattr(backbone, "freeze_vlm", False),
            f"shard_frozen=true shards a frozen VLM, but policy.backbone.type="
            f"{getattr(backbone, 'type', None)!r}"
            f"{' has none' if not hasattr(backbone, 'freeze_vlm') else ' trains its VLM (freeze_vlm=false)'}: "
            "drop --shard_frozen",
        )
        require(
            not self.algorithm.offline.enabled,
            f"shard_frozen=true with algorithm.offline.ratio={self.algorithm.offline.ratio}: the offline "
            "flow-matching term is computed on rank 0 alone and cannot run over sharded frozen weights; use one "
            "or the other",
        )

    def validate_recording(self) -> None:
        if not self.record_rollouts:
            return
        from .rollout_recorder import check_rollouts_dirs

        require(self.algorithm.type == "pi_rl",
                f"record_rollouts=true with algorithm.type={self.algorithm.type}: only pi_rl actors record rollouts")
        require(bool(self.rollouts_repo_id), f"rollouts_repo_id={self.rollouts_repo_id!r} must not be empty")
        # This process's own actor only: sibling actors create theirs while others start (the launcher checks all).
        check_rollouts_dirs(self, [self.actor_index])

    def validate_security(self) -> None:
        sec, host = self.security, self.policy.actor_learner_config.learner_host
        require(
            not (sec.token_env and sec.token_file),
            f"security.token_env={sec.token_env!r} and security.token_file={str(sec.token_file)!r}: "
            "set one of the two",
        )
        if self.algorithm.type != "pi_rl":
            stock = f"algorithm.type={self.algorithm.type} runs LeRobot's stock transport, which has no TLS or token"
            require(not (sec.tls_enabled or sec.token_enabled or sec.tls_server_name),
                    f"security.* is set but {stock}")
            require(is_loopback(host), f"policy.actor_learner_config.learner_host={host!r} is not a loopback "
                    f"address, and {stock}: keep it on 127.0.0.1")
        check_network_exposure(host, sec, "policy.actor_learner_config.learner_host")

    # --- encoding (draccus 0.11 cannot encode `env.processor.reset`, a field typed `Any`) ---

    def to_dict(self) -> dict[str, Any]:
        processor = getattr(self.env, "processor", None)
        reset = getattr(processor, "reset", None)
        if reset is None:
            out = draccus.encode(self)
        else:
            processor.reset = None
            try:
                out = draccus.encode(self)
            finally:
                processor.reset = reset
            out["env"]["processor"]["reset"] = dataclasses.asdict(reset)
        if self.algorithm is not None and self.algorithm.type == "sac":
            # Stock-shaped, so LeRobot's own SAC learner can resume from it.
            for f in dataclasses.fields(PiRLTrainRLServerPipelineConfig):
                if f.name not in {g.name for g in dataclasses.fields(TrainRLServerPipelineConfig)}:
                    out.pop(f.name, None)
        return out

    def _save_pretrained(self, save_directory: Path) -> None:
        with open(Path(save_directory) / TRAIN_CONFIG_NAME, "w") as f:
            json.dump(self.to_dict(), f, indent=4)


def policy_dataset_stats(cfg) -> dict[str, dict[str, torch.Tensor]] | None:
    """`policy.dataset_stats` (JSON lists) as the tensors LeRobot's processors take; None when unset."""
    stats = cfg.policy.dataset_stats
    if stats is None:
        return None
    return {k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in stats.items()}


def make_run_policy(cfg: PiRLTrainRLServerPipelineConfig):
    """The run's policy, built right after seeding with `cfg.seed` in every process that holds one (learner ranks
    and actors): weights no checkpoint sets (a fresh random init, such as the debug SmolVLA's VLM) come out the
    same everywhere. That matters because the learner publishes only trainable weights; the frozen ones must match
    (`PiRLAlgorithm.load_weights` checks their fingerprint). Callers seed their own streams afterwards."""
    from lerobot.policies import make_policy
    from lerobot.utils.random_utils import set_seed

    set_seed(cfg.seed)
    return make_policy(cfg=cfg.policy, env_cfg=cfg.env)


def apply_torch_threads(cfg: PiRLTrainRLServerPipelineConfig) -> int:
    """Set this process's torch intra-op threads from `cfg.torch_threads` (0 = auto, see the field); returns it."""
    import os

    import torch

    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // (cfg.num_actors + 1))
    torch.set_num_threads(threads)
    return threads


def _root_message(err: BaseException) -> str:
    """draccus hides a config's own `__post_init__` error (which names the field) under generic messages."""
    deepest, seen = err, 0
    while seen < 20:
        nxt = deepest.__cause__ or deepest.__context__
        if nxt is None:
            break
        deepest, seen = nxt, seen + 1
    return str(deepest) if isinstance(deepest, (ValueError, TypeError)) else str(err)


def _without_removed_policy_fields(config_path: str) -> str:
    """`config_path`, or a copy whose pi_rl `policy` no longer holds the fields `PiRLConfig` dropped (a train
    config saved by an earlier version)."""
    path = Path(config_path) / TRAIN_CONFIG_NAME if Path(config_path).is_dir() else Path(config_path)
    if path.suffix != ".json" or not path.is_file():
        return config_path
    raw = json.loads(path.read_text())
    policy = raw.get("policy")
    migrated = drop_removed_fields(policy) if isinstance(policy, dict) else policy
    if migrated is policy:
        return config_path
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**raw, "policy": migrated}, f)
    return f.name


def parse_config(args: list[str] | None = None) -> PiRLTrainRLServerPipelineConfig:
    """Parse like LeRobot's `parser.wrap` (`--config_path`, `--policy.path`, `--*.discover_packages_path`),
    then validate. Any bad value raises `ValueError` naming the field.

    Import this package first (the entry points do), so `pi_rl` types resolve.
    """
    import sys

    from draccus.utils import DecodingError

    cli_args = list(sys.argv[1:] if args is None else args)
    sys.argv = [sys.argv[0], *cli_args]  # LeRobot's path-arg helpers read sys.argv
    for plugin_arg, plugin_path in parser.parse_plugin_args(parser.PLUGIN_DISCOVERY_SUFFIX, cli_args).items():
        parser.load_plugin(plugin_path)
        cli_args = parser.filter_arg(plugin_arg, cli_args)
    cls = PiRLTrainRLServerPipelineConfig
    if "--help" in cli_args or "-h" in cli_args:
        parser.print_scoped_help(cls, cli_args)
        sys.exit(0)
    config_path = parser.parse_arg("config_path", cli_args)
    path_fields = cls.__get_path_fields__()
    cli_args = parser.filter_path_args(path_fields, cli_args)
    if config_path:
        config_path = parser.extract_path_fields_from_config(config_path, path_fields)
        config_path = _without_removed_policy_fields(config_path)
        cli_args = parser.filter_arg("config_path", cli_args)
    try:
        if config_path:
            cfg = cls.from_pretrained(config_path, cli_args=cli_args)
        else:
            cfg = draccus.parse(config_class=cls, args=cli_args)
    except DecodingError as err:
        raise ValueError(_root_message(err)) from err
    cfg.validate()
    return cfg
