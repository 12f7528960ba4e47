"""Tiny random diffusers editing pipelines, built offline from configs (no hub downloads), for tests.

Each builder returns a pipeline object; `save_tiny(kind, path)` writes it with `save_pretrained` (safetensors),
so the editor under test loads it back through the same `from_pretrained` code path a real model id uses.
The tokenizers are tiny character-level vocabularies built in code.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

from editthinker.backends.diffusers_editors import image_only_qwen_processor_class


def _char_vocab(specials: list[str], end_of_word: bool) -> dict[str, int]:
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
        if end_of_word:
            vocab.setdefault(ch + "</w>", len(vocab))
    return vocab


def clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_char_vocab(["<|startoftext|>", "<|endoftext|>"], True), merges=[], model_max_length=77)


def clip_text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=256, projection_dim=32, max_position_embeddings=77,
    )  # fmt: skip
    return CLIPTextModel(cfg)


def t5_parts() -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + list(string.ascii_lowercase + string.digits + string.punctuation)
    tok = T5Tokenizer(vocab=[(p, -1.0) for p in pieces], extra_ids=0, model_max_length=512)
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return tok, T5EncoderModel(cfg)


def instruct_pix2pix() -> Any:
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, norm_num_groups=4, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )  # fmt: skip
    return StableDiffusionInstructPix2PixPipeline(
        unet=unet, vae=vae, text_encoder=clip_text_encoder(), tokenizer=clip_tokenizer(),
        scheduler=EulerAncestralDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip


def flux_kontext() -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    tok2, te2 = t5_parts()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip_text_encoder(), text_encoder_2=te2,
        tokenizer=clip_tokenizer(), tokenizer_2=tok2, transformer=transformer, vae=vae,
        image_encoder=None, feature_extractor=None,
    )  # fmt: skip


def _qwen_tokenizer() -> Any:
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    vocab = _char_vocab(specials, False)
    for ch in " \n" + string.ascii_uppercase:
        vocab.setdefault(ch, len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=1024)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def qwen_image_edit(plus: bool = False) -> Any:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    if plus:
        from diffusers import QwenImageEditPlusPipeline as Pipeline
    else:
        from diffusers import QwenImageEditPipeline as Pipeline

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    torch.manual_seed(0)
    z = 4
    vae = AutoencoderKLQwenImage(  # 8x spatial downsampling like the real VAE (4x makes 1024^2 encodes minutes long)
        base_dim=8,
        z_dim=z,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z,
        latents_std=[1.0] * z,
    )  # fmt: skip
    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")}
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": 256,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=256, vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], image_token_id=ids["<|image_pad|>"],
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = image_only_qwen_processor_class()(image_processor=image_processor, tokenizer=tok)
    return Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder,
        tokenizer=tok, processor=processor,
    )  # fmt: skip


BUILDERS = {
    "instruct-pix2pix": instruct_pix2pix,
    "flux-kontext": flux_kontext,
    "qwen-image-edit": qwen_image_edit,
    "qwen-image-edit-plus": lambda: qwen_image_edit(plus=True),
}


def _as_standard_qwen_processor(path: Path) -> None:
    """Name the processor Qwen2VLProcessor in the saved files, as a real Qwen-Image-Edit checkpoint does."""
    for name, key in (("model_index.json", "processor"), ("processor/processor_config.json", "processor_class")):
        f = path / name
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        d[key] = ["transformers", "Qwen2VLProcessor"] if key == "processor" else "Qwen2VLProcessor"
        f.write_text(json.dumps(d, indent=2))


def save_tiny(kind: str, path: Path) -> Path:
    path = Path(path)
    pipe = BUILDERS[kind]()
    pipe.save_pretrained(path, safe_serialization=True)
    if kind.startswith("qwen"):
        _as_standard_qwen_processor(path)
    return path
