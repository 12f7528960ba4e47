"""Diffusers editors on tiny random pipelines: saved to tmp, loaded back through from_pretrained like a real id."""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch
from PIL import Image

from editthinker.backends.diffusers_editors import DiffusersEditor
from editthinker.backends.factory import build_editor
from editthinker.config import ConfigError, DiffusersEditorConfig, EditorConfig, parse_params
from editthinker.diffusers_pipelines import PIPELINES
from editthinker.roles import EditRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task
from tiny_editors import save_tiny

SIZE = 48  # requested output size; the 64 px source is resized, so the size really comes from params


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


def _editor(path, pipeline: str, **options) -> DiffusersEditor:
    editor_cfg = {"name": "tiny", "kind": "diffusers", "pipeline": pipeline, "model": str(path)}
    editor_cfg |= {"num_inference_steps": 2, "width": SIZE, "height": SIZE, **options}
    params = parse_params({"editors": [editor_cfg]})
    editor = build_editor(params.editors[0], params.world.image_size)
    assert isinstance(editor, DiffusersEditor)
    return editor


def _source(i: int = 0) -> tuple[bytes, str]:
    t = make_task(3, i, 2, 4, {"canonical": 1.0})
    return render_png(t.source, 64), t.instruction


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        return im.size


@pytest.mark.parametrize(
    "pipeline",
    [
        "instruct-pix2pix",
        "flux-kontext",
        pytest.param("qwen-image-edit", marks=pytest.mark.slow),  # ~20 s: a 1024^2 conditioning VAE encode per edit
        pytest.param("qwen-image-edit-plus", marks=pytest.mark.slow),
    ],
)
def test_tiny_pipeline_edits_deterministically(tmp_path, pipeline):
    editor = _editor(save_tiny(pipeline, tmp_path / pipeline), pipeline)
    assert editor.model_id == f"{pipeline}:{tmp_path / pipeline}"
    assert editor.call_args["num_inference_steps"] == 2
    src, instruction = _source()
    a, b, c = (editor.edit([EditRequest(src, instruction, seed)])[0] for seed in (0, 0, 1))
    assert _size(a) == (SIZE, SIZE)
    assert a == b  # same seed, same bytes
    assert a != c  # another seed, another image


def test_batch_of_requests_keeps_order_and_seeds(tmp_path):
    path = save_tiny("instruct-pix2pix", tmp_path / "p2p")
    batched = _editor(path, "instruct-pix2pix", batch_size=3)
    (src0, i0), (src1, i1) = _source(0), _source(1)
    reqs = [EditRequest(src0, i0, 0), EditRequest(src1, i1, 5), EditRequest(src0, i0, 0)]
    out = batched.edit(reqs)
    assert len(out) == 3 and all(_size(o) == (SIZE, SIZE) for o in out)
    assert out[0] == out[2] and out[0] != out[1]


def test_output_size_defaults_to_the_source(tmp_path):
    path = save_tiny("flux-kontext", tmp_path / "flux")
    editor = _editor(path, "flux-kontext", width=None, height=None)
    src, instruction = _source()
    assert _size(editor.edit([EditRequest(src, instruction, 0)])[0]) == (64, 64)


def test_paper_defaults_in_the_table():
    assert PIPELINES["flux-kontext"].model_id == "black-forest-labs/FLUX.1-Kontext-dev"
    assert (PIPELINES["flux-kontext"].steps, PIPELINES["flux-kontext"].guidance) == (28, {"guidance_scale": 2.5})
    assert PIPELINES["qwen-image-edit"].model_id == "Qwen/Qwen-Image-Edit"
    assert (PIPELINES["qwen-image-edit"].steps, PIPELINES["qwen-image-edit"].guidance) == (50, {"true_cfg_scale": 5.0})
    assert PIPELINES["instruct-pix2pix"].model_id == "timbrooks/instruct-pix2pix"
    assert PIPELINES["omnigen"].model_id == "Shitao/OmniGen-v1-diffusers"
    cfg = DiffusersEditorConfig(name="f", pipeline="flux-kontext")
    assert cfg.model == "" and cfg.device == "cpu" and cfg.num_inference_steps is None


@pytest.mark.parametrize(
    ("editor", "message"),
    [
        ({"name": "x", "kind": "diffusers", "pipeline": "nope"}, "unknown diffusers pipeline 'nope'"),
        (
            {"name": "x", "kind": "diffusers", "pipeline": "flux-kontext", "guidance": {"true_cfg_scale": 4}},
            "not used by flux-kontext",
        ),
        ({"name": "x", "kind": "diffusers", "pipeline": "flux-kontext", "dtpye": "x"}, "editors.0.dtpye: unknown key"),
        ({"name": "x", "kind": "http", "url": "localhost:1"}, "editors.0.url"),
        ({"name": "x", "kind": "magic"}, "Input tag 'magic'"),
        ({"name": "x", "kind": "diffusers", "pipeline": "flux-kontext", "cpu_offload": "model"}, "set device"),
    ],
)
def test_editor_config_errors_name_the_key(editor, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"editors": [editor]})


def test_synthetic_editor_config_unchanged():
    p = parse_params(
        {"editors": [{"name": "a", "profile": "painter"}, {"name": "b", "kind": "synthetic", "profile": "mover"}]}
    )
    assert all(isinstance(e, EditorConfig) and e.kind == "synthetic" for e in p.editors)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_omnigen_without_torchvision_fails_clearly(tmp_path):
    # diffusers' OmniGenPipeline imports its image processing from torchvision (absent on CPU machines here)
    with pytest.raises(RuntimeError, match="OmniGenPipeline needs torchvision"):
        DiffusersEditor(DiffusersEditorConfig(name="o", pipeline="omnigen", model=str(tmp_path)))
