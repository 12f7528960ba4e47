"""In-process diffusers editors behind `roles.Editor`: one class, one small table of per-pipeline defaults.

Every editor loads its pipeline with `from_pretrained` (safetensors only, `trust_remote_code` off) from a
model id or a local folder, edits the SOURCE image of each request with a `torch.Generator` seeded by the
request (so a fixed seed gives the same image), and returns PNG bytes of the configured output size.

Per-pipeline defaults come from `backends.diffusers_pipelines` (plain data); torch and diffusers are imported
when an editor is built.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
from typing import TYPE_CHECKING, Any

from editthinker.diffusers_pipelines import spec_for

if TYPE_CHECKING:
    from PIL import Image

    from editthinker.config import DiffusersEditorConfig
    from editthinker.roles import EditRequest


OMNIGEN_IMAGE_TAG = "<img><|image_1|></img>"


@functools.cache
def image_only_qwen_processor_class() -> Any:
    """Qwen2VLProcessor without its video processor, which needs torchvision (absent on the CPU machines here).

    Used only to load the `processor` of a Qwen-Image-Edit checkpoint when torchvision is not installed;
    the checkpoint's files are the standard Qwen2VLProcessor ones.
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return ImageOnlyQwen2VLProcessor


def _decode(png: bytes) -> Image.Image:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB")


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class DiffusersEditor:
    """One diffusers editing pipeline (see PIPELINES), loaded once, called in batches."""

    def __init__(self, cfg: DiffusersEditorConfig):
        self.cfg = cfg
        self.spec = spec_for(cfg.pipeline)
        self.name = cfg.name
        self.model = cfg.model or self.spec.model_id
        self.model_id = f"{cfg.pipeline}:{self.model}" + (f"@{cfg.revision}" if cfg.revision else "")
        self.call_args: dict[str, Any] = {
            "num_inference_steps": cfg.num_inference_steps or self.spec.steps,
            **self.spec.guidance,
            **cfg.guidance,
            **self.spec.extra,
        }
        if cfg.negative_prompt is not None and "negative_prompt" in self.call_args:
            self.call_args["negative_prompt"] = cfg.negative_prompt
        self.pipe = self._load()

    def _load(self) -> Any:
        import diffusers
        import torch

        has_torchvision = importlib.util.find_spec("torchvision") is not None
        if self.spec.needs_torchvision and not has_torchvision:
            raise RuntimeError(
                f"{self.spec.cls} needs torchvision, which is not installed; install it on the GPU image"
            )
        cls = getattr(diffusers, self.spec.cls)
        kwargs: dict[str, Any] = {
            "dtype": getattr(torch, self.cfg.dtype),
            "use_safetensors": True,
            "trust_remote_code": False,
            "revision": self.cfg.revision,
        }
        if self.spec.cls.startswith("QwenImageEdit") and not has_torchvision:
            kwargs["processor"] = image_only_qwen_processor_class().from_pretrained(
                self.model, subfolder="processor", revision=self.cfg.revision
            )
        pipe = cls.from_pretrained(self.model, **kwargs)
        if self.cfg.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=self.cfg.device)
        elif self.cfg.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.cfg.device)
        else:
            pipe.to(self.cfg.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _size(self, source: Image.Image) -> tuple[int, int]:
        return (self.cfg.width or source.width, self.cfg.height or source.height)

    def _call(
        self, sources: list[Image.Image], prompts: list[str], seeds: list[int], size: tuple[int, int]
    ) -> list[Any]:
        import torch

        width, height = size
        # CPU generators: the same seed gives the same noise whatever the device
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        args: dict[str, Any] = dict(self.call_args, generator=generators, output_type="pil")
        n = len(prompts)
        if "negative_prompt" in args:
            args["negative_prompt"] = [args["negative_prompt"]] * n
        kind = self.cfg.pipeline
        if kind == "instruct-pix2pix":  # the output takes the input's size
            args.update(prompt=prompts, image=[s.resize(size) for s in sources])
        elif kind == "flux-kontext":  # the source at the output size; max_area and no auto-resize, else 1024^2
            resized = [s.resize(size) for s in sources]
            args.update(prompt=prompts, image=resized, width=width, height=height, max_area=width * height)
            args["_auto_resize"] = False
        elif kind == "qwen-image-edit-plus":
            args.update(prompt=prompts, image=sources, width=width, height=height)
        elif kind == "qwen-image-edit":
            args.update(prompt=prompts, image=sources[0] if n == 1 else sources, width=width, height=height)
        elif kind == "omnigen":
            tagged = [p if OMNIGEN_IMAGE_TAG in p else f"{OMNIGEN_IMAGE_TAG} {p}" for p in prompts]
            args.update(prompt=tagged, input_images=[[s] for s in sources], width=width, height=height)
        with torch.inference_mode():
            return list(self.pipe(**args).images)

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        step = self.cfg.batch_size if self.spec.batchable else 1
        sources = [_decode(r.source_png) for r in requests]
        out: list[bytes] = []
        i = 0
        while i < len(requests):
            size = self._size(sources[i])
            j = i + 1  # a batch: consecutive requests with the same output size
            while j < len(requests) and j - i < step and self._size(sources[j]) == size:
                j += 1
            chunk = requests[i:j]
            images = self._call(sources[i:j], [r.instruction for r in chunk], [r.seed for r in chunk], size)
            out += [_encode(im if im.size == size else im.resize(size)) for im in images]
            i = j
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model_id": self.model_id, "call": json.loads(json.dumps(self.call_args))}
