"""Evaluating a released thinker: the lenient parser (the release's reward parser), the release prompt template,
and VLMThinker with `prompt: release` / `parse: lenient` on a tiny thinker built offline."""

from __future__ import annotations

import pytest

from editthinker.backends.vlm_thinker import VLMThinker, release_messages
from editthinker.config import ConfigError, InferenceConfig, ThinkerModelConfig, parse_params
from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
from editthinker.models.vlm import save_thinker
from editthinker.protocol import (
    RELEASE_PROMPT_TEMPLATE,
    check_release_template,
    fill_release_prompt,
    format_release_answer,
    format_thinker_answer,
    normalise_release_answer,
    parse_thinker_answer,
    parse_thinker_answer_lenient,
    read_release_prompt,
)
from editthinker.roles import ThinkRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task

SCORE = '{"semantic": 3, "quality": 9}'
GOOD = f"<think>still blue.</think><score>{SCORE}</score><answer>recolor the blue circle to red</answer>"


@pytest.mark.parametrize(
    ("raw", "reason", "semantic", "answer"),
    [
        (GOOD, "still blue.", 3.0, "recolor the blue circle to red"),
        # whitespace around tags removed
        (f"< think >still blue.</ think >\n< score > {SCORE} </score >\n<answer >\n paint it red \n</ answer>",
         "still blue.", 3.0, "paint it red"),
        # text before and after tolerated
        (f"Sure! Here is my review.\n{GOOD}\nHope this helps.", "still blue.", 3.0, "recolor the blue circle to red"),
        # the first block of each tag counts
        (GOOD + '<think>again</think><score>{"semantic": 9, "quality": 9}</score><answer>other</answer>',
         "still blue.", 3.0, "recolor the blue circle to red"),
        # tag names in any case for the check; the answer block is read case-sensitively (none here: "")
        (f"<THINK>x</THINK><score>{SCORE}</score><ANSWER>y</ANSWER>", "x", 3.0, ""),
        # JSON numbers only, but a bool is one (as in Python), and there is no range check
        ('<think>x</think><score>{"semantic": true, "quality": 9, "extra": "k"}</score><answer>y</answer>', "x", 1.0,
         "y"),
        ('<think>x</think><score>{"semantic": 11, "quality": 9}</score><answer>y</answer>', "x", 11.0, "y"),
        # whitespace next to "/" is deleted everywhere, the answer included
        (f"<think>x</think><score>{SCORE}</score><answer>swap the cat / dog</answer>", "x", 3.0, "swap the cat/dog"),
    ],
)  # fmt: skip
def test_lenient_parser_accepts_what_the_release_accepts(raw, reason, semantic, answer):
    v = parse_thinker_answer_lenient(raw)
    assert v.format_ok, v.error
    assert (v.reason, v.semantic, v.answer) == (reason, semantic, answer)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"<think>x</think><score>{SCORE}</score>", "missing tags: ['answer']"),
        (f"<answer>y</answer><think>x</think><score>{SCORE}</score>", "out of order"),
        (f"<think>x</think><SCORE>{SCORE}</SCORE><answer>y</answer>", "case-sensitive"),
        ('<think>x</think><score>{"semantic": "3", "quality": 9}</score><answer>y</answer>', "numbers"),
        ('<think>x</think><score>{"semantic": 3}</score><answer>y</answer>', "numbers"),
        (f"<think>x</think><score>```json\n{SCORE}\n```</score><answer>y</answer>", "not JSON"),
        ("<think>x</think><score>[3, 9]</score><answer>y</answer>", "not a JSON object"),
        ("", "missing tags"),
    ],
)
def test_lenient_parser_rejects_what_the_release_rejects(raw, why):
    v = parse_thinker_answer_lenient(raw)
    assert not v.format_ok and why in v.error
    assert v.answer == "" and v.semantic is None


def test_strict_stays_strict_and_lenient_accepts_every_strict_answer():
    for raw in (GOOD, format_thinker_answer("r", 8, 9, "a b"), format_release_answer("r", 8, 9, "a b")):
        s, lenient = parse_thinker_answer(raw), parse_thinker_answer_lenient(raw)
        assert s.format_ok and lenient.format_ok
        assert (s.reason, s.semantic, s.quality, s.answer) == (lenient.reason, lenient.semantic, lenient.quality,
                                                               lenient.answer)  # fmt: skip
    assert not parse_thinker_answer("Sure! " + GOOD).format_ok
    assert not parse_thinker_answer(GOOD.replace("<think>", "< think >")).format_ok


def test_lenient_stop_rule_scores_or_an_empty_answer():
    assert parse_thinker_answer_lenient(f"<think>x</think><score>{SCORE}</score><answer> </answer>").satisfied
    v = parse_thinker_answer_lenient('<think>x</think><score>{"semantic": 8, "quality": 8}</score><answer>y</answer>')
    assert v.satisfied and not parse_thinker_answer_lenient(GOOD).satisfied
    assert normalise_release_answer("a < b / c >") == "a<b/c>"


def test_template_filler_is_plain_one_pass_replacement_and_reads_back():
    template = '  <image><image>\nWant: "{original_instruction}". Used: "{rewritten_prompt}". JSON: {"semantic": 1}\n'
    text = fill_release_prompt(template, "make it {rewritten_prompt}", "paint it red")
    assert text == '<image><image>\nWant: "make it {rewritten_prompt}". Used: "paint it red". JSON: {"semantic": 1}'
    assert read_release_prompt(template, text) == ("make it {rewritten_prompt}", "paint it red")
    assert read_release_prompt(template, "<image><image>\nsomething else") is None
    check_release_template(RELEASE_PROMPT_TEMPLATE)
    with pytest.raises(ValueError, match="exactly two <image>"):
        check_release_template("<image>{original_instruction}{rewritten_prompt}")
    with pytest.raises(ValueError, match="rewritten_prompt"):
        check_release_template("<image><image>{original_instruction}")


def test_release_messages_split_on_image_tokens_as_the_release_loader_does():
    (msg,) = release_messages("<image><image>\nhello")
    assert msg["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "\nhello"}]
    (msg,) = release_messages("a<image>b<image>")
    assert [p["type"] for p in msg["content"]] == ["text", "image", "text", "image"]


def test_config_fields_and_errors():
    t = parse_params({}).inference
    assert (t.prompt, t.prompt_template, t.parse) == ("default", None, "strict")
    with pytest.raises(ConfigError, match="inference.*prompt_template is only read with prompt: release"):
        parse_params({"inference": {"prompt_template": "t.txt"}})
    with pytest.raises(ConfigError, match="inference.parse"):
        parse_params({"inference": {"parse": "loose"}})


# -- VLMThinker on a tiny thinker --------------------------------------------------------------------------
CFG = ThinkerModelConfig(hidden_size=64, num_layers=2, num_heads=4, max_new_tokens=8)
TEMPLATE = "<image><image>\nfix: {original_instruction}\nused: {rewritten_prompt}\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = build_tiny_thinker(CFG, seed=3)
    path = tmp_path_factory.mktemp("thinker")
    save_thinker(model, processor, path, MODEL_KIND)
    return path


def _requests(n: int) -> list[ThinkRequest]:
    out = []
    for i in range(n):
        t = make_task(8, i, 2, 4, {"relative": 1.0})
        out.append(ThinkRequest(render_png(t.source, 64), render_png(t.source, 64), t.instruction, f"v{i}"))
    return out


def test_vlm_thinker_fills_the_release_template(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text(TEMPLATE)
    inference = InferenceConfig(prompt="release", prompt_template=str(tmp_path / "t.txt"))
    thinker = VLMThinker(checkpoint, CFG, inference)
    seen: list[str] = []
    real = thinker.processor.apply_chat_template

    def spy(messages, **kw):
        text = real(messages, **kw)
        seen.append(text)
        return text

    monkeypatch.setattr(thinker.processor, "apply_chat_template", spy)
    reqs = _requests(2)
    raws = thinker.generate(reqs)
    assert len(raws) == 2 and all(isinstance(r, str) for r in raws)
    for r, text in zip(reqs, seen, strict=True):
        assert f"fix: {r.original_instruction}\nused: {r.previous_instruction}" in text
        assert text.count("<|image_pad|>") == 2
        assert text.index("<|image_pad|>") < text.index("fix: ")
    default = VLMThinker(checkpoint, CFG)
    assert "fix: " not in str(default.messages(reqs[0]))


def test_vlm_thinker_parse_mode_and_format_failures_per_mode(checkpoint, monkeypatch):
    release_style = f"Sure.\n< think >x</think>\n<score>{SCORE}</score>\n<answer>paint it red</answer>"
    raws = [GOOD, release_style, "no tags at all"]
    verdicts = {}
    for mode in ("strict", "lenient"):
        thinker = VLMThinker(checkpoint, CFG, InferenceConfig(parse=mode))
        monkeypatch.setattr(thinker, "generate", lambda requests: raws[: len(requests)])
        verdicts[mode] = thinker.think(_requests(3))
        assert thinker.format_failures == {"strict": 2, "lenient": 1}  # both modes counted, whichever is used
    assert [v.format_ok for v in verdicts["strict"]] == [True, False, False]
    assert [v.format_ok for v in verdicts["lenient"]] == [True, True, False]
    assert verdicts["lenient"][1].answer == "paint it red"


def test_vlm_thinker_rejects_a_bad_template_naming_the_key(checkpoint, tmp_path):
    (tmp_path / "bad.txt").write_text("<image>\n{original_instruction} {rewritten_prompt}")
    bad = InferenceConfig(prompt="release", prompt_template=str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="inference.prompt_template"):
        VLMThinker(checkpoint, CFG, bad)
    missing = InferenceConfig(prompt="release", prompt_template=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="inference.prompt_template: cannot read"):
        VLMThinker(checkpoint, CFG, missing)
