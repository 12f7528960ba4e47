"""The thinker as a vision-language model: its prompt, and how a checkpoint is saved, named and loaded.

Generic over image-text-to-text models that transformers loads (Qwen2.5-VL, Qwen3-VL, ...): a folder the
stages wrote or a model id, through AutoModelForImageTextToText + AutoProcessor, safetensors only, no
remote code. The tiny offline thinkers (models/tiny_vlm.py) are one kind of checkpoint among others.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen3VLProcessor,
)

from editthinker.storage import sha256_file, verify_checksums, write_checksums

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
THINKER_FILE = "thinker.json"


class ThinkerProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# A string key: registering under Qwen2_5_VLConfig would be silently skipped (it is a transformers class),
# and would remap real Qwen2.5-VL checkpoints. This only makes the class findable by its saved name.
AutoProcessor.register("editthinker_tiny_qwen2_5_vl", ThinkerProcessor, exist_ok=True)


class Qwen3ThinkerProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor without the video processor (which would need torchvision); same registration."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


AutoProcessor.register("editthinker_tiny_qwen3_vl", Qwen3ThinkerProcessor, exist_ok=True)


def prompt_text(original_instruction: str, previous_instruction: str) -> str:
    return f"original: {original_instruction}\nprevious: {previous_instruction}"


def thinker_messages(original_instruction: str, previous_instruction: str) -> list[dict]:
    """The thinker's prompt, shared by training and inference: the two images (I_src, I_edit^{t-1}), then text.

    Image parts are placeholders; the images travel separately (trl's `images` column, or the processor call).
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": prompt_text(original_instruction, previous_instruction)},
            ],
        }
    ]


def decode_image(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB")


def save_thinker(model, processor, path: Path, kind: str, state_dict: dict | None = None) -> None:
    """Write model (safetensors), processor and tokenizer files into `path`; `kind` names the thinker (e.g.
    tiny-qwen2.5-vl) in THINKER_FILE and so in its checkpoint id. `state_dict`: the weights to write when the
    model does not hold them whole (gathered from shards). Last, the sha256 of every file goes into
    storage.CHECKSUMS_FILE, which `load_thinker` verifies."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(path)
    (path / THINKER_FILE).write_text(json.dumps({"kind": kind}, indent=2, sort_keys=True) + "\n")
    write_checksums(path)


def kind_of(folder: Path) -> str:
    """A checkpoint folder's kind: from THINKER_FILE, else its config's model_type."""
    meta = Path(folder) / THINKER_FILE
    if meta.is_file():
        return str(json.loads(meta.read_text())["kind"])
    return str(json.loads((Path(folder) / "config.json").read_text()).get("model_type", "vlm"))


def checkpoint_id(path: Path | str) -> str:
    """Names the exact checkpoint: `<kind>@<sha256 prefix of the weights>` for a local folder (the weights
    file, or the shard index of a sharded one; kind from thinker.json, else the config's model_type), the
    id itself for anything else (a hub id such as Qwen/Qwen3-VL-8B-Instruct)."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        weights = folder / "model.safetensors.index.json"
    return f"{kind_of(folder)}@{sha256_file(weights)[:12]}"


def family_of(model: PreTrainedModel) -> str:
    """The model's family as its config names it (qwen2_5_vl, qwen3_vl, llava, ...)."""
    return str(getattr(model.config, "model_type", "") or type(model).__name__)


def set_image_pixels(processor: ProcessorMixin, min_pixels: int | None, max_pixels: int | None) -> None:
    """Give the processor's image processor a pixel budget per image (Qwen-VL smart resize: `size` shortest_edge /
    longest_edge, in pixels); saved with the processor, so training and inference see the same images."""
    if min_pixels is None and max_pixels is None:
        return
    image_processor: Any = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if size is None or not hasattr(size, "longest_edge"):
        raise ValueError(f"{type(image_processor).__name__} has no pixel budget (size.longest_edge) to set")
    lo = size.shortest_edge if min_pixels is None else min_pixels
    hi = size.longest_edge if max_pixels is None else max_pixels
    if lo > hi:
        raise ValueError(f"image min pixels {lo} exceed max pixels {hi}")
    image_processor.size = type(size)(shortest_edge=lo, longest_edge=hi)


def load_base(
    base: str,
    revision: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    quantization: str = "none",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A pretrained image-text-to-text model to train from: a hub id (at `revision`) or a folder, read the same
    way; safetensors only. `quantization` 4bit / 8bit loads it through bitsandbytes for QLoRA (CUDA only)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    kwargs: dict = {"revision": revision, "trust_remote_code": trust_remote_code}
    extra: dict = {}
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit",
            load_in_8bit=quantization == "8bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[dtype],
        )
    model = AutoModelForImageTextToText.from_pretrained(
        base, use_safetensors=True, dtype=DTYPES[dtype], **kwargs, **extra
    )
    processor = AutoProcessor.from_pretrained(base, **kwargs)
    if not hasattr(processor, "image_processor"):  # AutoProcessor silently falls back to a bare tokenizer
        raise TypeError(f"{base}: AutoProcessor gave {type(processor).__name__}, which reads no images")
    return model, processor


def load_thinker(
    path: Path | str, device: str = "cpu", dtype: str = "float32"
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Any image-text-to-text checkpoint (a folder the stages wrote, or a model id such as a Qwen2.5-VL or
    Qwen3-VL release) through AutoModelForImageTextToText + AutoProcessor; safetensors, no remote code.

    `device` is "cpu" or "cuda[:N]"; `dtype` one of DTYPES (real releases: "bfloat16" on a GPU). A folder with
    checksums (every one `save_thinker` wrote) is verified first: storage.IntegrityError names a changed file."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if Path(path).is_dir():
        verify_checksums(Path(path))
    model = AutoModelForImageTextToText.from_pretrained(
        path, trust_remote_code=False, use_safetensors=True, dtype=DTYPES[dtype]
    )
    model = model.to(torch.device(device))  # type: ignore[arg-type]
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    if not hasattr(processor, "image_processor"):  # AutoProcessor silently falls back to a bare tokenizer
        raise TypeError(f"{path}: AutoProcessor gave {type(processor).__name__}, which reads no images")
    model.eval()
    return model, processor
