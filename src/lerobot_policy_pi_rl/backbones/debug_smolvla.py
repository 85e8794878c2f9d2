"""Debug-size SmolVLA: LeRobot's own SmolVLA architecture at a size a CPU trains, random weights, built offline.

`--policy.backbone.type=smolvla --policy.backbone.debug_size=tiny` (or `small`) builds `SmolVLAPolicy` from a
`SmolVLAConfig` whose VLM is a SmolVLM written locally by this module: a SmolVLM model configuration of the
chosen width and depth (llama text model, SigLIP-style vision tower, pixel-shuffle connector) and a word-level
tokenizer that carries SmolVLM's special tokens. Everything else is upstream: the policy class, the action expert
with its cross/self-attention layers, the prefix (image tokens, language tokens, a projected state token), the
flow-matching loss, and the processors (normalization, tokenizer step). So SFT, PI-RL, checkpoints and evaluation
run through exactly the code a full-size SmolVLA run uses, only smaller.

What it is not: a model to deploy. The weights start random (no pretrained vision or language), the vocabulary is
a short English word list (other words become `<unk>`), and images are seen by a vision tower of one or two
layers. Use it to see the whole VLA path learn on a laptop; use `backbone.pretrained_path` (e.g.
`lerobot/smolvla_base` fine-tuned on your data) for real runs.

The VLM directory is written under `$HF_LEROBOT_HOME/pi_rl_debug_vlm/` (deterministic content, written once,
rewritten if missing), so checkpoints that name it reload in any process of the same machine; the saved pi_rl
config keeps `debug_size`, and loading it points the upstream config at that directory again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lerobot.configs.types import PolicyFeature

#: Bump when the written VLM directory's content changes (a new directory name, never a silent rewrite).
FORMAT_VERSION = 1

SPECIAL_TOKENS = (
    "<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
)
# Instruction words of common manipulation benchmarks (PickCube, MetaWorld, LIBERO-style phrasing). The tokenizer
# lower-cases and splits punctuation off; a word outside this list becomes `<unk>`.
VOCABULARY = tuple(
    """
    . , ! ? ' - the a an and or of to in on into onto from with at by for it its up down out off over under
    near next left right top bottom front back side middle center inside outside above below between then
    pick place put lift raise lower move push pull slide open close turn rotate press insert remove take grab
    hold drop stack unstack reach touch hit sweep assemble disassemble hang plug unplug dial shoot
    cube block box bin basket bowl plate cup mug bottle can drawer door window handle button lever faucet knob
    peg hole shelf table cabinet microwave stove oven lid ball puck goal wall coffee soup sauce ketchup butter
    milk cheese cream tomato orange juice book caddy tray rack stick nut wrench hammer
    red green blue yellow black white purple pink brown gray small large big long short
    task complete robot arm gripper object target position
    """.split()
)


@dataclass(frozen=True)
class DebugSize:
    """Widths and depths of a debug SmolVLM (the action expert follows upstream: 0.75 x the text width)."""

    text_width: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_mlp: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    patch_size: int
    # Square input size of the vision tower; camera images are resized (with padding) to it.
    image_size: int
    # Pixel-shuffle factor of the connector: (image_size / patch_size / scale_factor)^2 tokens per image.
    scale_factor: int
    # Language tokens per instruction (padded to this length).
    tokenizer_max_length: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size // self.scale_factor) ** 2


DEBUG_SIZES: dict[str, DebugSize] = {
    # About 0.26 M parameters, one image token: wiring checks and the CPU demo.
    "tiny": DebugSize(
        text_width=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128,
        vision_width=32, vision_layers=1, vision_heads=2, vision_mlp=64,
        patch_size=16, image_size=64, scale_factor=4, tokenizer_max_length=16,
    ),
    # About 1.2 M parameters, 16 image tokens, four text layers (two of the expert's layers cross-attend).
    "small": DebugSize(
        text_width=128, text_layers=4, text_heads=4, text_kv_heads=2, text_mlp=256,
        vision_width=64, vision_layers=2, vision_heads=2, vision_mlp=128,
        patch_size=8, image_size=64, scale_factor=2, tokenizer_max_length=16,
    ),
}


def debug_size_spec(name: str) -> DebugSize:
    if name not in DEBUG_SIZES:
        raise ValueError(f"backbone.debug_size={name!r} is not valid; allowed: {', '.join(DEBUG_SIZES)}")
    return DEBUG_SIZES[name]


def write_smolvlm(directory: Path, size: DebugSize, *, words: tuple[str, ...] | list[str] = VOCABULARY) -> Path:
    """Write a local SmolVLM "model id" into `directory`: model configuration, tokenizer and processor.

    The processor is upstream's `SmolVLMProcessor` (SmolVLA reads its tokenizer and special-token ids); the tokenizer
    is word-level over `words` plus SmolVLM's special tokens.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(words) if w not in SPECIAL_TOKENS]
    vocab = {token: i for i, token in enumerate(tokens)}
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word_level.normalizer = normalizers.Lowercase()
    # Words and punctuation apart ("it." -> "it", "."); special tokens are matched before this runs.
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=max(size.image_tokens, 1),
    )
    processor.save_pretrained(directory)
    SmolVLMConfig(
        text_config=dict(
            model_type="llama", hidden_size=size.text_width, intermediate_size=size.text_mlp,
            num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
            num_key_value_heads=size.text_kv_heads, head_dim=size.text_width // size.text_heads,
            vocab_size=len(vocab), pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=size.vision_width, intermediate_size=size.vision_mlp, num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_heads, patch_size=size.patch_size, image_size=size.image_size,
        ),
        scale_factor=size.scale_factor,
        image_token_id=vocab["<image>"],
        pad_token_id=0,
    ).save_pretrained(directory)
    return directory


def debug_vlm_dir(name: str) -> Path:
    """Where the debug VLM of size `name` lives on this machine."""
    from lerobot.utils.constants import HF_LEROBOT_HOME

    debug_size_spec(name)
    return Path(HF_LEROBOT_HOME) / "pi_rl_debug_vlm" / f"smolvlm-{name}-v{FORMAT_VERSION}"


def ensure_debug_vlm(name: str) -> Path:
    """The debug VLM directory of size `name`, written first if missing.

    Written into a temporary sibling and renamed into place, so concurrent processes (actors, evaluation workers)
    never read a half-written directory; a process that loses the race keeps the winner's identical copy.
    """
    target = debug_vlm_dir(name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_smolvlm(staging, DEBUG_SIZES[name])
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def debug_smolvla_config(
    name: str,
    *,
    input_features: dict[str, PolicyFeature],
    output_features: dict[str, PolicyFeature],
    chunk_size: int,
    n_action_steps: int,
    num_steps: int,
    device: str | None = None,
):
    """LeRobot's `SmolVLAConfig` of a debug-size SmolVLA for these features (every weight trainable in SFT)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    size = debug_size_spec(name)
    return SmolVLAConfig(
        input_features=dict(input_features),
        output_features=dict(output_features),
        device=device,
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        num_steps=num_steps,
        vlm_model_name=str(ensure_debug_vlm(name)),
        load_vlm_weights=False,
        num_vlm_layers=size.text_layers,
        resize_imgs_with_padding=(size.image_size, size.image_size),
        tokenizer_max_length=size.tokenizer_max_length,
        # Random weights: SFT trains the whole model; which part PI-RL trains is `backbone.freeze_vlm`'s call.
        train_expert_only=False,
        freeze_vision_encoder=False,
        push_to_hub=False,
    )
