#!/usr/bin/env bash
# The flow_mlp PickCube pipeline at a chosen size, each stage timed: record scripted demonstrations, SFT with
# LeRobot's `lerobot-train`, PI-RL with `lerobot-pi-rl-train` (learner + actors over gRPC), evaluation of both.
# Every command goes through `python -m`, so it runs wherever `bench/device/setup.sh` was sourced (no console
# scripts needed). From the repository root:
#
#     DEVICE=cuda UPDATES=20 bench/device/pickcube.sh [run_dir]
#
# Sizes (environment): DEVICE (cpu), EPISODES demonstrations (20), SFT_STEPS (800), UPDATES PPO updates (2),
# ROLLOUT_CHUNKS (256), N_ENVS per actor (4), ACTORS (2), EVAL_EPISODES (100), EVAL_WORKERS (2),
# VARIANT (flow_noise), ACTOR_LR (the demo's per variant). The defaults other than UPDATES are the demo's.
set -euo pipefail
run_dir=${1:-outputs/device_pickcube}
py=${PYTHON:-python3}
device=${DEVICE:-cpu}
variant=${VARIANT:-flow_noise}
# The demo's actor learning rate per variant.
if [ "$variant" = flow_noise ]; then actor_lr=${ACTOR_LR:-3e-6}; else actor_lr=${ACTOR_LR:-1e-5}; fi
rm -rf "$run_dir"
mkdir -p "$run_dir"
timings="$run_dir/timings.txt"

stage() {  # stage NAME COMMAND...: run it, append its wall time to timings.txt
    local name=$1 start end
    shift
    echo "=== $name: $*"
    start=$EPOCHREALTIME
    "$@"
    end=$EPOCHREALTIME
    awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%-10s %8.1f s\n", n, b - a }' | tee -a "$timings"
}

stage record "$py" -m lerobot_policy_pi_rl.scripts.record_demos --output_dir "$run_dir/demos" \
    --num_episodes "${EPISODES:-20}" --seed 0
stage sft "$py" -m lerobot.scripts.lerobot_train --policy.type=pi_rl --policy.backbone.type=flow_mlp \
    --policy.variant.type="$variant" --policy.device="$device" --policy.push_to_hub=false \
    --dataset.repo_id=local/pickcube --dataset.root="$run_dir/demos" --steps="${SFT_STEPS:-800}" \
    --batch_size=64 --save_freq="${SFT_STEPS:-800}" --log_freq=200 --num_workers=0 --seed=0 \
    --wandb.enable=false --output_dir="$run_dir/sft"
sft_model="$run_dir/sft/checkpoints/last/pretrained_model"
evaluate() {
    "$py" -m lerobot_policy_pi_rl.scripts.evaluate --policy_path "$1" --num_episodes "${EVAL_EPISODES:-100}" \
        --seed 100000 --workers "${EVAL_WORKERS:-2}" --device "$device" --output "$2" --quiet
}
stage eval_sft evaluate "$sft_model" "$run_dir/eval_sft.json"
stage pi_rl "$py" -m lerobot_policy_pi_rl.runtime.train --policy.path="$sft_model" --policy.device="$device" \
    --policy.variant.type="$variant" --env.type=pi_rl_pickcube --algorithm.type=pi_rl \
    --algorithm.rollout_chunks="${ROLLOUT_CHUNKS:-256}" --algorithm.minibatch_size=64 \
    --algorithm.actor_lr="$actor_lr" --algorithm.critic_lr=1e-3 --algorithm.update_epochs=4 \
    --num_updates="${UPDATES:-2}" --n_envs="${N_ENVS:-4}" --num_actors="${ACTORS:-2}" \
    --checkpoint_every_updates=10 --seed=0 --wandb.enable=false --output_dir="$run_dir/pi_rl"
stage eval_rl evaluate "$run_dir/pi_rl/checkpoints/last/pretrained_model" "$run_dir/eval_pi_rl.json"
"$py" - "$run_dir" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for name in ("sft", "pi_rl"):
    result = json.loads((run / f"eval_{name}.json").read_text())
    summary = {k: result[k] for k in ("success_rate", "success_ci95", "mean_return", "num_episodes")}
    print(f"eval {name}: {json.dumps(summary)}")
EOF
cat "$timings"
