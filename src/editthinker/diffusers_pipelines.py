"""The diffusers editors' table: per pipeline, its class, real model id and the method's default settings.

Plain data with no imports of the project or of heavy libraries, so `config` validates params against it and
`backends.diffusers_editors` builds editors from it. The method's settings: FLUX.1 Kontext [dev] 28 steps,
guidance 2.5; Qwen-Image-Edit 50 steps, true CFG 5.0; the others follow their model cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PipelineSpec:
    cls: str  # the diffusers pipeline class
    model_id: str  # the real model's hub id (the default of `model`)
    steps: int
    guidance: dict[str, float]  # guidance call arguments and their defaults (params may override these only)
    batchable: bool = True  # a list of (prompt, image) pairs is a batch (not one multi-image edit)
    extra: dict[str, Any] = field(default_factory=dict)  # fixed call arguments
    needs_torchvision: bool = False  # diffusers imports the pipeline's image processing from torchvision


PIPELINES: dict[str, PipelineSpec] = {
    # the method's settings: 28 steps, guidance 2.5 (paper at 1024^2; set width/height to 1024)
    "flux-kontext": PipelineSpec(
        "FluxKontextPipeline", "black-forest-labs/FLUX.1-Kontext-dev", 28, {"guidance_scale": 2.5}
    ),
    # the method's settings: 50 steps, true CFG 5.0 (true CFG needs a negative prompt; " " as in the model card)
    "qwen-image-edit": PipelineSpec(
        "QwenImageEditPipeline",
        "Qwen/Qwen-Image-Edit",
        50,
        {"true_cfg_scale": 5.0},
        batchable=False,
        extra={"negative_prompt": " "},
    ),
    # the multi-image variant: `image` is a list of images for ONE edit, so requests run one by one
    "qwen-image-edit-plus": PipelineSpec(
        "QwenImageEditPlusPipeline",
        "Qwen/Qwen-Image-Edit-2509",
        50,
        {"true_cfg_scale": 4.0},
        batchable=False,
        extra={"negative_prompt": " "},
    ),
    # the pipeline's own defaults (100 steps, text guidance 7.5, image guidance 1.5)
    "instruct-pix2pix": PipelineSpec(
        "StableDiffusionInstructPix2PixPipeline",
        "timbrooks/instruct-pix2pix",
        100,
        {"guidance_scale": 7.5, "image_guidance_scale": 1.5},
    ),
    # OmniGen v1's editing example: guidance 2.0, image guidance 1.6; the prompt names the image
    "omnigen": PipelineSpec(
        "OmniGenPipeline",
        "Shitao/OmniGen-v1-diffusers",
        50,
        {"guidance_scale": 2.0, "img_guidance_scale": 1.6},
        batchable=False,
        needs_torchvision=True,
    ),
}


def spec_for(pipeline: str) -> PipelineSpec:
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown diffusers pipeline {pipeline!r}; known: {sorted(PIPELINES)}")
    return PIPELINES[pipeline]
