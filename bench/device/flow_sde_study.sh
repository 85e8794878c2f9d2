#!/usr/bin/env bash
# Flow-SDE plateau study on the flow_mlp PickCube demo recipe (docs/measurements.md, "Why Flow-SDE levelled off"):
# PI-RL runs side by side from ONE SFT checkpoint (the demo's Flow-SDE SFT stage), each a learner + 2 actors with
# one torch thread per process (as on 2 cores), all stopped after the same wall time, then the demo's evaluation
# (100 episodes, seeds 100000-100099, deterministic ODE) of each run's last checkpoint and of the SFT checkpoint.
# Meant for a machine with 16+ cores (ROUND=1: six runs; ROUND=2: four more), after `source bench/device/setup.sh`:
#   bash bench/device/flow_sde_study.sh SFT_DIR OUT_DIR TRAIN_SECONDS
set -u
SFT=$1; OUT=$2; BUDGET=${3:-420}
mkdir -p "$OUT"
common=(--policy.path="$SFT" --policy.device=cpu --env.type=pi_rl_pickcube --algorithm.type=pi_rl
  --algorithm.advantage.type=gae --algorithm.rollout_chunks=256 --algorithm.critic_lr=1e-3
  --algorithm.update_epochs=4 --algorithm.critic_warmup_updates=0 --algorithm.minibatch_size=64
  --num_updates=130 --n_envs=4 --num_actors=2 --checkpoint_every_updates=10 --wandb.enable=false --torch_threads=1)
declare -A RUNS
if [ "${ROUND:-1}" = 1 ]; then RUNS=(
  [base_s0]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --algorithm.actor_lr=1e-5 --seed=0"
  [base_s1]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --algorithm.actor_lr=1e-5 --seed=1"
  [lr3e-6]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --algorithm.actor_lr=3e-6 --seed=0"
  [a0.3]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.3 --algorithm.actor_lr=1e-5 --seed=0"
  [nolast]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --policy.variant.exclude_last_step=true --algorithm.actor_lr=1e-5 --seed=0"
  [all_lr3e-6]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --policy.variant.stochastic_steps=all --algorithm.actor_lr=3e-6 --seed=0"
); else RUNS=(
  [base_s2]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.5 --algorithm.actor_lr=1e-5 --seed=2"
  [a0.3_s1]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.3 --algorithm.actor_lr=1e-5 --seed=1"
  [a0.3_s2]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.3 --algorithm.actor_lr=1e-5 --seed=2"
  [a0.2]="--policy.variant.type=flow_sde --policy.variant.noise_level=0.2 --algorithm.actor_lr=1e-5 --seed=0"
); fi
port=50100
for name in "${!RUNS[@]}"; do
  port=$((port + 1))
  ( OMP_NUM_THREADS=1 timeout "$BUDGET" python -m lerobot_policy_pi_rl.runtime.train "${common[@]}" ${RUNS[$name]} \
      --policy.actor_learner_config.learner_port=$port --output_dir="$OUT/$name" > "$OUT/$name.log" 2>&1;
    echo "$name train rc=$?" ) &
done
wait
for name in "${!RUNS[@]}"; do
  ckpt="$OUT/$name/checkpoints/last/pretrained_model"
  [ -d "$ckpt" ] || { echo "$name: no checkpoint"; continue; }
  ( OMP_NUM_THREADS=1 python -m lerobot_policy_pi_rl.scripts.evaluate --policy_path "$ckpt" --num_episodes 100 \
      --seed 100000 --workers 2 --quiet --output "$OUT/eval_$name.json" > "$OUT/eval_$name.log" 2>&1; echo "$name eval rc=$?" ) &
done
[ "${ROUND:-1}" = 1 ] && ( OMP_NUM_THREADS=1 python -m lerobot_policy_pi_rl.scripts.evaluate --policy_path "$SFT" --num_episodes 100 \
    --seed 100000 --workers 2 --quiet --output "$OUT/eval_sft.json" > "$OUT/eval_sft.log" 2>&1; echo "sft eval rc=$?" ) &
wait
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for ev in sorted(out.glob("eval_*.json")):
    name = ev.stem[5:]
    r = json.loads(ev.read_text())
    mfile = out / name / "metrics.jsonl"
    rows = [json.loads(l) for l in mfile.read_text().splitlines() if l.strip()] if mfile.exists() else []
    upd = [x for x in rows if "update" in x]
    last = upd[-1] if upd else {}
    def mean(key, part):
        vals = [x[key] for x in part if key in x]
        return round(sum(vals) / len(vals), 3) if vals else None
    print(name, r["success_rate"], r["success_ci95"],
          "updates", last.get("update"), "env_steps", last.get("rollout/interaction_steps"),
          "train success (stochastic) by 10-update block", [mean("rollout/success_rate", upd[i:i + 10]) for i in range(0, len(upd), 10)],
          "approx_kl", mean("ppo/approx_kl", upd), "clip", mean("ppo/clip_fraction", upd), "std", mean("flow/std_mean", upd))
PY
