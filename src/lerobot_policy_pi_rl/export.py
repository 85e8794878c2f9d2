"""`lerobot-pi-rl-export`: turn a pi_rl checkpoint into a deployment checkpoint.

    lerobot-pi-rl-export --checkpoint outputs/.../checkpoints/last/pretrained_model --output exported/

* VLA backbones (`smolvla`, `pi0`, `pi05`): writes a *plain* LeRobot checkpoint of that policy type (config.json,
  model.safetensors, policy pre/post-processors) holding the RL-fine-tuned weights. It loads and runs with
  LeRobot's own classes (`SmolVLAPolicy.from_pretrained`, `lerobot-eval --policy.path=...`) without this plugin;
  the value and noise heads are dropped, and so is this plugin's default-task processor step. The upstream
  inference step count is set to pi_rl's `num_denoise_steps` K, so the export samples pi_rl's deterministic ODE.
* `flow_mlp`: writes a clean `pi_rl` checkpoint (config, weights incl. the heads, processors; no training state)
  with deterministic inference, loadable by LeRobot's `make_policy` / `lerobot-eval` with the plugin installed.

The output directory must be empty or absent unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"


def _check_checkpoint(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r} is not a directory")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE, POSTPROCESSOR_FILE) if not (checkpoint / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--checkpoint {str(checkpoint)!r} is not a pi_rl pretrained_model directory: missing {', '.join(missing)}"
        )
    policy_type = json.loads((checkpoint / CONFIG_FILE).read_text()).get("type")
    if policy_type != "pi_rl":
        raise ValueError(f"--checkpoint {str(checkpoint)!r} holds a {policy_type!r} policy, not pi_rl")


def _prepare_output(output: Path, checkpoint: Path, overwrite: bool) -> None:
    if output.resolve() == checkpoint.resolve():
        raise ValueError(f"--output {str(output)!r} is the checkpoint itself")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {str(output)!r} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--output {str(output)!r} is not empty; pass --overwrite to replace its contents")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Export `checkpoint` (a pi_rl `pretrained_model` dir) to `output`; returns the output directory."""
    from lerobot.processor import PolicyProcessorPipeline

    from .backbones.vla_processors import without_default_task
    from .configuration_pi_rl import load_policy_config
    from .modeling_pi_rl import PiRLPolicy

    checkpoint, output = Path(checkpoint), Path(output)
    _check_checkpoint(checkpoint)
    _prepare_output(output, checkpoint, overwrite)

    config = load_policy_config(checkpoint)
    config.device = "cpu"  # export never needs an accelerator
    policy = PiRLPolicy.from_pretrained(checkpoint, config=config)
    preprocessor = PolicyProcessorPipeline.from_pretrained(checkpoint, PREPROCESSOR_FILE)
    postprocessor = PolicyProcessorPipeline.from_pretrained(checkpoint, POSTPROCESSOR_FILE)

    if policy.config.backbone.is_vla:
        upstream = policy.backbone.policy
        # Deploy with the K denoise steps RL trained the chain for (SmolVLA `num_steps`, π0/π0.5
        # `num_inference_steps`): the exported policy then samples exactly pi_rl's deterministic ODE.
        steps_field = "num_steps" if hasattr(upstream.config, "num_steps") else "num_inference_steps"
        setattr(upstream.config, steps_field, policy.config.num_denoise_steps)
        upstream.save_pretrained(output)
        preprocessor = without_default_task(preprocessor)
    else:
        policy.config.stochastic_inference = False
        policy.save_pretrained(output)
    preprocessor.save_pretrained(output)
    postprocessor.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lerobot-pi-rl-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="pi_rl pretrained_model directory")
    parser.add_argument("--output", required=True, help="directory to write the exported checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --output")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"lerobot-pi-rl-export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
