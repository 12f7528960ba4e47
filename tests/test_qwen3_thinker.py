"""The VLM thinker over a tiny Qwen3-VL built offline: the same from_pretrained path a released id takes."""

from __future__ import annotations

import hashlib

import pytest
import torch
from pydantic import ValidationError
from transformers import Qwen3VLForConditionalGeneration

from editthinker import single_edit
from editthinker.backends.factory import load_vlm_thinker
from editthinker.backends.vlm_thinker import VLMThinker
from editthinker.config import InferenceConfig, Params, ThinkerModelConfig
from editthinker.models.tiny_vlm import QWEN3_KIND, build_tiny_qwen3_thinker
from editthinker.models.vlm import (
    Qwen3ThinkerProcessor,
    checkpoint_id,
    decode_image,
    load_thinker,
    save_thinker,
    thinker_messages,
)
from editthinker.roles import ThinkRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task

CFG = ThinkerModelConfig(hidden_size=64, num_layers=2, num_heads=4, max_new_tokens=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = build_tiny_qwen3_thinker(CFG, seed=3)
    path = tmp_path_factory.mktemp("qwen3")
    save_thinker(model, processor, path, kind=QWEN3_KIND)
    return path, model, processor


def _requests(n: int) -> list[ThinkRequest]:
    out = []
    for i in range(n):
        t = make_task(8, i, 2, 4, {"relative": 1.0})
        out.append(ThinkRequest(render_png(t.source, 64), render_png(t.target, 64), t.instruction, t.instruction))
    return out


def _inputs(processor, n: int = 2):
    reqs = _requests(n)
    texts = [
        processor.apply_chat_template(
            thinker_messages(r.original_instruction, r.previous_instruction), add_generation_prompt=True, tokenize=False
        )
        for r in reqs
    ]
    images = [[decode_image(r.source_png), decode_image(r.previous_png)] for r in reqs]
    return processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")


def test_save_load_round_trip_gives_identical_logits(checkpoint):
    path, model, processor = checkpoint
    assert (path / "model.safetensors").is_file()
    loaded, proc2 = load_thinker(str(path))  # a string, as a hub id is passed
    assert isinstance(loaded, Qwen3VLForConditionalGeneration) and isinstance(proc2, Qwen3ThinkerProcessor)
    assert loaded.config.model_type == "qwen3_vl"
    inputs = _inputs(processor)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == 2 * 2 * 9  # two requests, two 64x64 images each, 3x3 merged tokens per image
    with torch.no_grad():
        a, b = model(**inputs).logits, loaded(**inputs).logits
    assert torch.equal(a, b)
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert checkpoint_id(path) == f"{QWEN3_KIND}@{digest[:12]}"


def test_think_returns_one_verdict_per_request_and_counts_format_failures(checkpoint):
    path = checkpoint[0]
    thinker = VLMThinker(str(path), CFG, batch_size=2)  # 3 requests: two batches
    assert thinker.model_id == checkpoint_id(path) and thinker.model_id.startswith("tiny-qwen3-vl@")
    verdicts = thinker.think(_requests(3))
    assert len(verdicts) == 3
    assert all(not v.format_ok and v.error for v in verdicts)  # random weights: failures, never raised


def test_batched_generation_matches_one_by_one(checkpoint):
    path = checkpoint[0]
    reqs = _requests(3)
    batched = VLMThinker(path, CFG, batch_size=3).generate(reqs)
    single = VLMThinker(path, CFG, batch_size=1).generate(reqs)
    assert len(batched) == 3 and batched == single


def test_device_and_dtype_come_from_the_inference_config(checkpoint):
    path = checkpoint[0]
    thinker = load_vlm_thinker(path, CFG, InferenceConfig(dtype="bfloat16", batch_size=3))
    assert isinstance(thinker, VLMThinker)
    assert thinker.model.dtype == torch.bfloat16 and thinker.model.device.type == "cpu"
    assert thinker.batch_size == 3
    assert len(thinker.think(_requests(2))) == 2
    with pytest.raises(ValidationError):
        InferenceConfig(device="gpu")
    with pytest.raises(ValidationError):
        InferenceConfig(dtype="int8")


def test_checkpoint_id_of_a_hub_id_and_of_a_sharded_folder(checkpoint, tmp_path):
    assert checkpoint_id("Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"
    _, model, processor = checkpoint
    model.save_pretrained(tmp_path, max_shard_size="200KB")  # no thinker.json: the kind is the model_type
    processor.save_pretrained(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    assert index.is_file() and not (tmp_path / "model.safetensors").exists()
    thinker = VLMThinker(tmp_path, CFG)
    assert thinker.model_id == f"qwen3_vl@{hashlib.sha256(index.read_bytes()).hexdigest()[:12]}"
    inputs = _inputs(processor, 1)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, thinker.model(**inputs).logits)


def test_edit_thinker_model_reads_params_inference_thinker_model(checkpoint):
    with pytest.raises(ValueError, match="inference.thinker_model"):
        single_edit._thinker(Params(), "model", 0)
    params = Params(thinker=CFG, inference=InferenceConfig(thinker_model=str(checkpoint[0])))
    thinker = single_edit._thinker(params, "model", 0)
    assert isinstance(thinker, VLMThinker) and thinker.model_id.startswith("tiny-qwen3-vl@")
