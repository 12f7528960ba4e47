"""A tiny Qwen2.5-VL thinker, built offline: model config, byte-level BPE tokenizer, image processor.

Nothing is downloaded. The tokenizer is trained by the `tokenizers` library on a corpus written from the
world's own language (instruction templates, indirect colours, critique sentences, score JSON), plus the
chat and vision special tokens of Qwen2.5-VL. Images are 64x64 scenes resized to 48x48 and cut into 8x8
patches merged 2x2, so each image is 9 tokens, one per grid cell of the scene.

The checkpoint is a standard `qwen2_5_vl` model and a processor class registered with AutoProcessor, so
`models.vlm.load_thinker` takes the same from_pretrained path a real model id would.
"""

from __future__ import annotations

import itertools
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    set_seed,
)

from editthinker.config import ThinkerModelConfig
from editthinker.models.vlm import Qwen3ThinkerProcessor, ThinkerProcessor, prompt_text
from editthinker.protocol import format_thinker_answer
from editthinker.world import language as lang
from editthinker.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPE_COLOURS, SHAPES, SIZES

MODEL_KIND = "tiny-qwen2.5-vl"
QWEN3_KIND = "tiny-qwen3-vl"
IMAGE_SIDE = 48  # 64x64 scenes are resized to this: 3x3 merged tokens, one per scene cell
PATCH, MERGE = 8, 2
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")  # fmt: skip
TAG_TOKENS = ("<think>", "</think>", "<score>", "</score>", "<answer>", "</answer>")

# Qwen2-VL style: every image is <|vision_start|><|image_pad|><|vision_end|>, the processor expands the pad.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# -- corpus and tokenizer ------------------------------------------------------------------------------
def _slot_values() -> dict[str, list[str]]:
    colours = list(COLOURS) + list(lang.INDIRECT_COLOURS.values())
    objs = [f"the {c} {s}" for c in SHAPE_COLOURS for s in SHAPES]
    objs += [f"the {s}" for s in SHAPES] + [f"the {c} shape" for c in SHAPE_COLOURS]
    objs += [f"the {k} shape" for k in ("leftmost", "rightmost", "topmost", "bottommost", "largest", "smallest")]
    return {"obj": objs, "colour": colours, "pos": list(POSITIONS), "size": list(SIZES), "shape": list(SHAPES)}


def _reasons() -> list[str]:
    """Sentences in the shape of the expert's critiques (backends.synthetic.describe_gap)."""
    out = [f"the background is {a}; it should be {b}." for a in BACKGROUNDS for b in BACKGROUNDS if a != b]
    out += [
        "the edited image cannot be read as a clean scene.",
        "the edit is right but the image has speckle artifacts.",
        "the edit matches the instruction.",
    ]
    for p, z, c, s in itertools.product(POSITIONS, SIZES, SHAPE_COLOURS, SHAPES):
        out.append(f"there is a {c} {s} at the {p} that should not be there.")
        out.append(f"a {z} {c} {s} is missing at the {p}.")
        out.append(f"the shape at the {p} is a {z} {c} {s}; it should be a {z} {c} {s}.")
    return out


def build_corpus() -> list[str]:
    """Deterministic training text for the tokenizer: the world's language and the answer format."""
    values = _slot_values()
    lines: list[str] = []
    for t in lang.TEMPLATES:
        names = [n for n in ("obj", "colour", "pos", "size", "shape") if "{" + n + "}" in t.text]
        for combo in itertools.product(*(values[n] for n in names)):
            lines.append(lang.fill(t, **dict(zip(names, combo, strict=True))))
    reasons = _reasons()
    lines += reasons
    for s, q in itertools.product(range(11), range(11)):
        lines.append(format_thinker_answer(reasons[(s * 11 + q) % len(reasons)], s, q, lines[(s * 7 + q) % 500]))
    lines += [prompt_text(a, b) for a, b in zip(lines[:200], lines[200:400], strict=True)]
    return lines


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    # the answer tags are ordinary (non-special) tokens: kept when decoding, but never split
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=1024,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_processor(vocab_size: int) -> ThinkerProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_SIDE * IMAGE_SIDE,
        max_pixels=(IMAGE_SIDE + 2) ** 2,  # headroom so smart_resize's float rounding still lands on 48
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
    )
    return ThinkerProcessor(image_processor=image_processor, tokenizer=build_tokenizer(vocab_size),
                            chat_template=CHAT_TEMPLATE)  # fmt: skip


# -- model ---------------------------------------------------------------------------------------------
def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2  # the sections must sum to head_dim / 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _text_config(cfg: ThinkerModelConfig, eos: int, pad: int, interleaved: bool) -> dict[str, Any]:
    """The language model's sizes and M-RoPE, shared by the Qwen2.5-VL and Qwen3-VL thinkers."""
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope_section(cfg.hidden_size // cfg.num_heads),
    }
    if interleaved:  # Qwen3-VL interleaves the M-RoPE sections
        rope["mrope_interleaved"] = True
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.hidden_size * 3,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "max_position_embeddings": 1024,
        "rope_parameters": rope,
        "bos_token_id": None,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


def model_config(cfg: ThinkerModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    if cfg.hidden_size % cfg.num_heads or (cfg.hidden_size // cfg.num_heads) % 2:
        raise ValueError("thinker.hidden_size must be a multiple of 2 * thinker.num_heads")
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than thinker.vocab_size={cfg.vocab_size}")
    ids: dict[str, int] = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}  # type: ignore[arg-type]
    vision_hidden = cfg.vision_hidden_size
    if vision_hidden % 4:
        raise ValueError("thinker.vision_hidden_size must be a multiple of 4 (2 heads, even head size)")
    return Qwen2_5_VLConfig(
        text_config=_text_config(cfg, ids["<|im_end|>"], ids["<|endoftext|>"], interleaved=False),
        vision_config={
            "depth": cfg.vision_layers,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "window_size": IMAGE_SIDE,  # one window per image
            "out_hidden_size": cfg.hidden_size,
            "fullatt_block_indexes": list(range(cfg.vision_layers)),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def ids_of(config: Qwen2_5_VLConfig, name: str) -> int:
    return int(getattr(config.text_config, name))


def build_tiny_thinker(
    cfg: ThinkerModelConfig, seed: int
) -> tuple[Qwen2_5_VLForConditionalGeneration, ThinkerProcessor]:
    """A freshly initialised thinker and its processor; same config and seed give identical weights and files."""
    processor = build_processor(cfg.vocab_size)
    config = model_config(cfg, processor.tokenizer)
    set_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    _greedy_generation(model, config, cfg.max_new_tokens)
    return model, processor


def _greedy_generation(model: PreTrainedModel, ids_from: Qwen2_5_VLConfig, max_new_tokens: int) -> None:
    """Greedy decoding that stops at <|im_end|> and pads with <|endoftext|>; the model in eval mode."""
    gen = model.generation_config
    gen.eos_token_id = ids_of(ids_from, "eos_token_id")
    gen.pad_token_id = ids_of(ids_from, "pad_token_id")
    gen.bos_token_id = None
    gen.do_sample = False
    gen.max_new_tokens = max_new_tokens
    model.eval()


def build_tiny_qwen3_thinker(
    cfg: ThinkerModelConfig, seed: int
) -> tuple[Qwen3VLForConditionalGeneration, Qwen3ThinkerProcessor]:
    """A freshly initialised tiny Qwen3-VL (same tokenizer, image processor and prompt as the Qwen2.5-VL one).

    Qwen3-VL differs in the vision tower (learned position embeddings interpolated to the grid, deepstack
    features fed to the first text layers) and in interleaved M-RoPE; the image processor is Qwen2-VL's.
    """
    base = build_processor(cfg.vocab_size)
    processor = Qwen3ThinkerProcessor(base.image_processor, base.tokenizer, chat_template=CHAT_TEMPLATE)
    v2 = model_config(cfg, base.tokenizer)  # validates the sizes and carries the special token ids
    head_dim = cfg.hidden_size // cfg.num_heads
    grid = IMAGE_SIDE // PATCH  # patches per side of one image
    config = Qwen3VLConfig(
        text_config={
            **_text_config(cfg, ids_of(v2, "eos_token_id"), ids_of(v2, "pad_token_id"), interleaved=True),
            "head_dim": head_dim,
        },
        vision_config={
            "depth": cfg.vision_layers,
            "hidden_size": cfg.vision_hidden_size,
            "intermediate_size": cfg.vision_hidden_size * 2,
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "out_hidden_size": cfg.hidden_size,
            "num_position_embeddings": grid * grid,  # a square: interpolated to each image's grid
            "deepstack_visual_indexes": [0],
        },
        image_token_id=v2.image_token_id,
        video_token_id=v2.video_token_id,
        vision_start_token_id=v2.vision_start_token_id,
        vision_end_token_id=v2.vision_end_token_id,
        tie_word_embeddings=True,
    )
    set_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).float()
    _greedy_generation(model, v2, cfg.max_new_tokens)
    return model, processor
