"""Tiny, offline VLA checkpoints for tests: LeRobot's real SmolVLA / π0 / π0.5 code at toy sizes.

* SmolVLA: a local "VLM" directory (the package's `tiny` debug SmolVLM: model config, word-level tokenizer with
  SmolVLM's special tokens, `SmolVLMProcessor`) that `SmolVLAConfig.vlm_model_name` points to; instant.
* π0 / π0.5: upstream builds PaliGemma from a fixed variant table, so the builder patches the module-level
  `get_gemma_config` (tiny depth/width) and shrinks the vision tower; the 257k vocabulary and the 2048-wide
  projection stay, which is what makes them slow (seconds, GBs): tests using them are marked `slow`.

* The PaliGemma tokenizer that LeRobot's π0/π0.5 processors load by hub id (gated) is replaced by a tiny
  word-level one served from a temporary hub cache (`paligemma_tokenizer_cache`), so their real processors run.

Every builder writes a *plain LeRobot checkpoint directory* (config.json, model.safetensors, policy processors)
exactly as `lerobot-train` would, so the pi_rl backbones load it through their normal path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import torch

from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_STATE

IMAGE_KEY = "observation.images.top"
STATE_DIM = 6
ACTION_DIM = 4
CHUNK_SIZE = 10
IMAGE_SHAPE = (3, 32, 32)
#: Vocabulary of the tiny π0/π0.5 language models (upstream: 257152); token ids must stay below it.
TINY_VOCAB = 1024
TASK_WORDS = "pick up the cube complete task put it in box move to red green blue a an".split()


def features() -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    inputs = {
        IMAGE_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE_SHAPE),
        OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
    }
    outputs = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    return inputs, outputs


def dataset_stats() -> dict[str, dict[str, torch.Tensor]]:
    """Stats for every normalization mode the tiny policies use (π0.5 normalizes state/action by quantiles)."""
    g = torch.Generator().manual_seed(0)
    return {
        OBS_STATE: {
            "mean": torch.randn(STATE_DIM, generator=g),
            "std": torch.rand(STATE_DIM, generator=g) + 0.5,
            "min": -torch.ones(STATE_DIM) * 3,
            "max": torch.ones(STATE_DIM) * 3,
            "q01": -torch.ones(STATE_DIM) * 2,
            "q99": torch.ones(STATE_DIM) * 2,
        },
        ACTION: {
            "mean": torch.randn(ACTION_DIM, generator=g),
            "std": torch.rand(ACTION_DIM, generator=g) + 0.5,
            "min": -torch.ones(ACTION_DIM) * 2,
            "max": torch.ones(ACTION_DIM) * 2,
            "q01": -torch.ones(ACTION_DIM) * 1.5,
            "q99": torch.ones(ACTION_DIM) * 1.5,
        },
        IMAGE_KEY: {
            "mean": torch.full((3, 1, 1), 0.5),
            "std": torch.full((3, 1, 1), 0.25),
            "min": torch.zeros(3, 1, 1),
            "max": torch.ones(3, 1, 1),
        },
    }


def raw_observation(batch: int, seed: int = 0, with_task: bool = True) -> dict:
    """An environment-side observation batch (images in [0, 1]), as the pre-processor receives it."""
    g = torch.Generator().manual_seed(seed)
    obs = {
        IMAGE_KEY: torch.rand(batch, *IMAGE_SHAPE, generator=g),
        OBS_STATE: torch.randn(batch, STATE_DIM, generator=g),
    }
    if with_task:
        obs["task"] = ["pick up the red cube"] * batch
    return obs


# ---------------------------------------------------------------------------------------------------------------
# SmolVLA
# ---------------------------------------------------------------------------------------------------------------


def write_tiny_smolvlm(directory: Path, *, image_size: int = 64) -> Path:
    """A local SmolVLM "model id" (the package's `tiny` debug size, vocabulary `TASK_WORDS`)."""
    import dataclasses

    from lerobot_policy_pi_rl.backbones.debug_smolvla import DEBUG_SIZES, write_smolvlm

    return write_smolvlm(directory, dataclasses.replace(DEBUG_SIZES["tiny"], image_size=image_size), words=TASK_WORDS)


def tiny_smolvla_config(vlm_dir: Path, *, image_size: int = 64, num_steps: int = 10):
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    inputs, outputs = features()
    return SmolVLAConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        chunk_size=CHUNK_SIZE,
        n_action_steps=5,
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=2,
        resize_imgs_with_padding=(image_size, image_size),
        tokenizer_max_length=16,
        num_steps=num_steps,
        push_to_hub=False,
    )


def save_plain_checkpoint(policy, directory: Path, stats) -> Path:
    """Write `policy` and its upstream processors as LeRobot's `lerobot-train` does."""
    from lerobot.policies.factory import make_pre_post_processors

    policy.save_pretrained(directory)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=stats)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory


def build_tiny_smolvla_checkpoint(root: Path, *, seed: int = 0, num_steps: int = 10) -> Path:
    """`root/vlm` (tiny SmolVLM) and `root/smolvla` (plain smolvla checkpoint); returns the latter."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    vlm_dir = write_tiny_smolvlm(root / "vlm")
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(None):
        policy = SmolVLAPolicy(tiny_smolvla_config(vlm_dir, num_steps=num_steps))
    _perturb(policy, seed)
    return save_plain_checkpoint(policy, root / "smolvla", dataset_stats())


def _perturb(policy: torch.nn.Module, seed: int) -> None:
    """Give zero-initialized projections (e.g. action_out_proj biases) non-trivial values."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dim() == 1 and bool((p == 0).all()):
                p.copy_(0.02 * torch.randn(p.shape, generator=g).to(p.dtype))


# ---------------------------------------------------------------------------------------------------------------
# π0 / π0.5
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_paligemma(module_name: str):
    """Patch `get_gemma_config` of `lerobot.policies.<module_name>.modeling_<module_name>` to toy sizes.

    The VLM width stays 2048 (the vision projection dim is fixed upstream), 8 heads; depth 1, MLP 64, vision
    tower 1 layer, vocabulary `TINY_VOCAB` instead of 257152. The action expert is 1 layer of width 64.
    """
    import importlib

    modeling = importlib.import_module(f"lerobot.policies.{module_name}.modeling_{module_name}")
    gemma_config = modeling.GemmaConfig

    def get_gemma_config(variant: str):
        if variant == "gemma_2b":
            return gemma_config(width=2048, depth=1, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)
        return gemma_config(width=64, depth=1, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)

    original_mapping = modeling.CONFIG_MAPPING

    class _Mapping:
        def __getitem__(self, name):
            factory = original_mapping[name]
            if name == "gemma":
                return lambda *args, **kwargs: factory(*args, **{**kwargs, "vocab_size": TINY_VOCAB})
            if name != "paligemma":
                return factory

            def make(*args, **kwargs):
                cfg = factory(*args, **kwargs)
                cfg.vision_config.num_hidden_layers = 1
                cfg.vision_config.hidden_size = 32
                cfg.vision_config.num_attention_heads = 2
                cfg.vision_config.patch_size = 16
                return cfg

            return make

    real_paligemma = modeling.PaliGemmaForConditionalGenerationWithPiGemma

    def make_paligemma(config):
        # Upstream assigns the 257k vocabulary just before this call: shrink it here.
        config.text_config.vocab_size = TINY_VOCAB
        return real_paligemma(config=config)

    with (
        mock.patch.object(modeling, "get_gemma_config", get_gemma_config),
        mock.patch.object(modeling, "CONFIG_MAPPING", _Mapping()),
        mock.patch.object(modeling, "PaliGemmaForConditionalGenerationWithPiGemma", make_paligemma),
    ):
        yield


def tiny_pi_config(policy_type: str, *, num_steps: int = 10):
    inputs, outputs = features()
    kwargs = dict(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        chunk_size=CHUNK_SIZE,
        n_action_steps=5,
        image_resolution=(32, 32),
        # π0.5 puts the discretized state into the prompt: room for "Task: <5 words>, State: <6 bins>;\nAction: "
        # with the tiny tokenizer (`write_tiny_paligemma_tokenizer`), so the state is not truncated away.
        tokenizer_max_length=12 if policy_type == "pi0" else 24,
        num_inference_steps=num_steps,
        dtype="float32",
        push_to_hub=False,
    )
    if policy_type == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config

        return PI0Config(**kwargs)
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    return PI05Config(**kwargs)


def build_tiny_pi_checkpoint(root: Path, policy_type: str, *, seed: int = 0, with_processors: bool = False) -> Path:
    """A plain `pi0`/`pi05` checkpoint directory: config + weights, and with `with_processors` LeRobot's own
    processors too (they name the PaliGemma tokenizer: build, load and run them inside
    `paligemma_tokenizer_cache`). Without processors, tests feed token ids directly (`tokenized_observation`)."""
    import importlib

    modeling = importlib.import_module(f"lerobot.policies.{policy_type}.modeling_{policy_type}")
    policy_cls = modeling.PI0Policy if policy_type == "pi0" else modeling.PI05Policy
    torch.manual_seed(seed)
    with tiny_paligemma(policy_type), contextlib.redirect_stdout(None):
        policy = policy_cls(tiny_pi_config(policy_type))
    _perturb(policy, seed)
    directory = root / policy_type
    if with_processors:
        return save_plain_checkpoint(policy, directory, dataset_stats())
    policy.save_pretrained(directory)
    return directory


#: The hub id LeRobot's π0/π0.5 processors load their tokenizer from (hard-coded upstream; gated on the hub).
PALIGEMMA_TOKENIZER_ID = "google/paligemma-3b-pt-224"
#: Any 40-hex commit: the snapshot name the fake hub cache resolves `main` to.
_FAKE_COMMIT = "0" * 40


def write_tiny_paligemma_tokenizer(directory: Path) -> Path:
    """A word-level stand-in for the PaliGemma tokenizer (`tokenizer.json` + `tokenizer_config.json`).

    PaliGemma's conventions: `<pad>` = 0, `<eos>` = 1, `<bos>` = 2 prepended to every prompt. Words are split on
    whitespace and punctuation, so π0's "task\n" prompts and π0.5's "Task: ..., State: 12 200 ...;\nAction: "
    prompts (state bins 0..255) tokenize to known ids; every id is below `TINY_VOCAB`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    words = list(dict.fromkeys(TASK_WORDS + ["Task", "State", "Action", ":", ",", ";", "."]))
    vocab = {token: i for i, token in enumerate(special + words + [str(b) for b in range(256)])}
    assert len(vocab) <= TINY_VOCAB, len(vocab)
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(directory)
    # `AutoTokenizer` reads the repo's model config first (as the real repo has one): a PaliGemma config.
    (directory / "config.json").write_text('{"model_type": "paligemma"}')
    return directory


@contextlib.contextmanager
def paligemma_tokenizer_cache(cache_root: Path):
    """Make `AutoTokenizer.from_pretrained("google/paligemma-3b-pt-224")` load the tiny tokenizer, offline.

    Writes the tokenizer into `cache_root` laid out as the Hugging Face hub cache for that repo id
    (`models--google--paligemma-3b-pt-224/{refs/main, snapshots/<commit>/...}`), then points the hub cache at
    `cache_root` and forces offline mode for the duration. `huggingface_hub` reads `HF_HUB_CACHE` /
    `HF_HUB_OFFLINE` from the environment once, at import, so the resolved constants are patched, not the
    environment; LeRobot's `TokenizerProcessorStep` and `transformers` then run their normal code path.
    """
    from huggingface_hub import constants

    repo = cache_root / ("models--" + PALIGEMMA_TOKENIZER_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / _FAKE_COMMIT
    if not (snapshot / "tokenizer.json").is_file():
        write_tiny_paligemma_tokenizer(snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(_FAKE_COMMIT)
    with (
        mock.patch.object(constants, "HF_HUB_CACHE", str(cache_root)),
        mock.patch.object(constants, "HF_HUB_OFFLINE", True),
    ):
        yield cache_root


def tokenized_observation(batch: int, *, seed: int = 0, max_length: int = 12, vocab: int = 1000) -> dict:
    """A pre-processed π0/π0.5 batch (normalized state, images in [0, 1], token ids with a real pad mask)."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_length, (batch,), generator=g)
    mask = torch.arange(max_length)[None, :] < lengths[:, None]
    return {
        IMAGE_KEY: torch.rand(batch, *IMAGE_SHAPE, generator=g),
        OBS_STATE: torch.randn(batch, STATE_DIM, generator=g),
        OBS_LANGUAGE_TOKENS: torch.randint(1, vocab, (batch, max_length), generator=g) * mask,
        OBS_LANGUAGE_ATTENTION_MASK: mask,
    }


# ---------------------------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------------------------


def vla_rollout(batch: dict, sample, *, version: int = 0):
    """A `Rollout` of one-chunk episodes from a sampled VLA batch (preprocessed observations, terminal rows)."""
    from lerobot_policy_pi_rl.rl.rollout import Rollout

    obs = {k: v for k, v in batch.items() if k.startswith("observation") and torch.is_tensor(v)}
    n = sample.log_prob.shape[0]
    no = torch.zeros(n, dtype=torch.bool)
    return Rollout(
        observations=obs, next_observations=obs, chain=sample.record.chain, stochastic=sample.record.stochastic,
        noise_level=sample.record.noise_level, log_prob=sample.log_prob, value=sample.value,
        reward=torch.linspace(-1, 1, n), terminated=~no, truncated=no,
        policy_version=torch.full((n,), version, dtype=torch.long), stream_id=torch.arange(n), intervention=no,
        success=no, group_id=torch.full((n,), -1, dtype=torch.long),
    )
