"""The tiny Qwen2.5-VL thinker: deterministic build, save/load round trip, the VLMThinker role."""

from __future__ import annotations

import hashlib

import pytest
import torch

from editthinker.backends.vlm_thinker import VLMThinker
from editthinker.config import ThinkerModelConfig
from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
from editthinker.models.vlm import (
    ThinkerProcessor,
    checkpoint_id,
    decode_image,
    load_thinker,
    save_thinker,
    thinker_messages,
)
from editthinker.protocol import format_thinker_answer
from editthinker.roles import ThinkRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task

CFG = ThinkerModelConfig(hidden_size=64, num_layers=2, num_heads=4, max_new_tokens=12)


def _inputs(processor, n: int = 2):
    tasks = [make_task(5, i, 2, 4, {"indirect": 1.0}) for i in range(n)]
    texts = [
        processor.apply_chat_template(
            thinker_messages(t.instruction, t.instruction), add_generation_prompt=True, tokenize=False
        )
        for t in tasks
    ]
    images = [[decode_image(render_png(t.source, 64)), decode_image(render_png(t.target, 64))] for t in tasks]
    return processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = build_tiny_thinker(CFG, seed=3)
    path = tmp_path_factory.mktemp("thinker")
    save_thinker(model, processor, path, MODEL_KIND)
    return path, model, processor


def test_build_is_deterministic(tmp_path):
    (m1, p1), (m2, p2) = build_tiny_thinker(CFG, seed=3), build_tiny_thinker(CFG, seed=3)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    save_thinker(m1, p1, tmp_path / "a", MODEL_KIND)
    save_thinker(m2, p2, tmp_path / "b", MODEL_KIND)
    for name in ("tokenizer.json", "model.safetensors", "config.json", "processor_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    m3, _ = build_tiny_thinker(CFG, seed=4)
    assert not torch.equal(m3.state_dict()["lm_head.weight"], s1["lm_head.weight"])


def test_tokenizer_and_image_tokens(checkpoint):
    _, model, processor = checkpoint
    tok = processor.tokenizer
    assert len(tok) <= CFG.vocab_size
    answer = format_thinker_answer("the background is gray; it should be white.", 0, 10, "paint the red circle blue")
    ids = tok(answer)["input_ids"]
    assert tok.decode(ids) == answer
    assert len(ids) < 40  # world words are single tokens
    for tag in ("<think>", "</score>", "<answer>"):
        assert len(tok(tag)["input_ids"]) == 1
    inputs = _inputs(processor, 1)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == 2 * 9  # two 64x64 images, 3x3 merged tokens each
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 6], [1, 6, 6]]


def test_prompt_is_a_prefix_of_prompt_plus_completion(checkpoint):
    """trl splits prompt and completion by rendering both; the template must be prefix-consistent."""
    processor = checkpoint[2]
    msgs = thinker_messages("paint the red circle blue", "paint the red circle blue")
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template([*msgs, {"role": "assistant", "content": "X"}], tokenize=False)
    assert full.startswith(prompt)
    assert prompt.count("<|image_pad|>") == 2
    assert prompt.index("<|image_pad|>") < prompt.index("original: paint")


def test_save_load_round_trip_gives_identical_logits(checkpoint):
    path, model, processor = checkpoint
    loaded, proc2 = load_thinker(path)
    assert isinstance(proc2, ThinkerProcessor)
    assert loaded.config.model_type == "qwen2_5_vl"
    inputs = _inputs(processor)
    with torch.no_grad():
        a, b = model(**inputs).logits, loaded(**inputs).logits
    assert torch.equal(a, b)
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert checkpoint_id(path) == f"tiny-qwen2.5-vl@{digest[:12]}"


def _requests(n: int) -> list[ThinkRequest]:
    out = []
    for i in range(n):
        t = make_task(8, i, 2, 4, {"relative": 1.0})
        out.append(ThinkRequest(render_png(t.source, 64), render_png(t.source, 64), t.instruction, t.instruction))
    return out


def test_vlm_thinker_returns_one_verdict_per_request_and_counts_format_failures(checkpoint):
    path = checkpoint[0]
    thinker = VLMThinker(path, CFG, batch_size=2)  # 3 requests: two batches
    assert thinker.model_id == checkpoint_id(path)
    verdicts = thinker.think(_requests(3))
    assert len(verdicts) == 3
    # an untrained model cannot produce the format: failures come back as verdicts, not exceptions
    assert all(not v.format_ok and v.error for v in verdicts)


def test_vlm_thinker_parses_answers_with_its_stop_thresholds(checkpoint, monkeypatch):
    thinker = VLMThinker(checkpoint[0], CFG.model_copy(update={"stop_semantic": 9.0}))
    raws = [
        format_thinker_answer("fine.", 9, 9, "recolor the red circle to blue"),
        format_thinker_answer("almost.", 8, 10, "recolor the red circle to blue"),
        "<think>no score</think><answer>x</answer>",
    ]
    monkeypatch.setattr(thinker, "generate", lambda requests: raws[: len(requests)])
    v = thinker.think(_requests(3))
    assert [x.format_ok for x in v] == [True, True, False]
    assert [x.satisfied for x in v[:2]] == [True, False]
    assert v[0].answer == "recolor the red circle to blue"


def test_batched_generation_matches_one_by_one(checkpoint):
    path = checkpoint[0]
    reqs = _requests(3)
    batched = VLMThinker(path, CFG, batch_size=3).generate(reqs)
    single = VLMThinker(path, CFG, batch_size=1).generate(reqs)
    assert batched == single
