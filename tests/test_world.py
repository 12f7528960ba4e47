"""The synthetic world: exact perception, judge exactness, instruction language, editors' determinism."""

from pathlib import Path

import numpy as np
import pytest

from editthinker.backends.synthetic import PROFILES, SyntheticEditor, SyntheticExpert, SyntheticJudge, semantic_score
from editthinker.roles import EditRequest, ThinkRequest
from editthinker.world import language as lang
from editthinker.world.perception import perceive
from editthinker.world.scene import Scene, Shape, from_png, render_array, render_png
from editthinker.world.tasks import STYLES, apply_op, canonical_instruction, make_task

STYLE_W = {s: 1.0 for s in STYLES}
TASKS = [make_task(5, i, 2, 5, STYLE_W) for i in range(120)]


@pytest.mark.parametrize("size", [64, 96])
def test_perception_recovers_every_rendered_scene_exactly(size):
    for t in TASKS:
        for scene in (t.source, t.target):
            seen = perceive(render_array(scene, size))
            assert seen.scene == scene and seen.artifact_fraction == 0.0


def test_judge_gives_target_full_marks_and_source_less():
    judge = SyntheticJudge()
    for t in TASKS:
        src = render_png(t.source, 64)
        s = judge.score(src, render_png(t.target, 64), t.instruction, t.target.to_json())
        assert (s.semantic, s.quality, s.overall) == (10, 10, 10)
        noop = judge.score(src, src, t.instruction, t.target.to_json())
        assert noop.semantic == 0  # doing nothing achieves none of the edit


def test_semantic_partial_credit_and_penalty():
    a, b = Shape("circle", "blue", "small", "top left"), Shape("square", "red", "large", "center")
    source = Scene("white", (a, b))
    target = Scene("white", (Shape("circle", "green", "small", "top left"), b))
    wrong_colour = Scene("white", (Shape("circle", "yellow", "small", "top left"), b))
    collateral = Scene(
        "white", (Shape("circle", "green", "small", "top left"), Shape("square", "red", "small", "center"))
    )
    assert semantic_score(source, wrong_colour, target) == 0
    assert semantic_score(source, collateral, target) == 7  # the edit is right but another shape changed
    assert semantic_score(source, target, target) == 10


def test_quality_drops_with_artifacts():
    t = TASKS[0]
    pixels = render_array(t.target, 64)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 64, 40), rng.integers(0, 64, 40)
    pixels[ys, xs] = (3, 5, 7)
    from editthinker.world.scene import to_png

    s = SyntheticJudge().score(render_png(t.source, 64), to_png(pixels), t.instruction, t.target.to_json())
    assert s.quality < 10


def test_every_canonical_instruction_reads_back_to_its_op():
    for t in TASKS:
        for variant in range(2):
            text = canonical_instruction(t.op, variant)
            reading = lang.read(text)
            assert reading is not None and reading.template.op == t.op.op and reading.template.style == "canonical"


def test_every_style_occurs_and_instructions_parse_or_are_vague():
    styles = {t.style for t in TASKS}
    assert styles == set(STYLES)
    for t in TASKS:
        assert lang.read(t.instruction) is not None, t.instruction


def test_tasks_are_a_pure_function_of_seed_and_index():
    assert make_task(5, 3, 2, 5, STYLE_W) == TASKS[3]
    assert make_task(6, 3, 2, 5, STYLE_W) != TASKS[3]
    for t in TASKS:
        assert apply_op(t.source, t.op) == t.target


def test_editors_are_deterministic_and_canonical_wording_helps():
    judge = SyntheticJudge()
    for profile in PROFILES:
        ed = SyntheticEditor(profile, profile, 64)
        hits = {"original": 0, "canonical": 0}
        for i, t in enumerate(TASKS):
            src = render_png(t.source, 64)
            a = ed.edit([EditRequest(src, t.instruction, i)])[0]
            assert a == ed.edit([EditRequest(src, t.instruction, i)])[0]
            hits["original"] += judge.score(src, a, "", t.target.to_json()).semantic == 10
            c = ed.edit([EditRequest(src, canonical_instruction(t.op), i)])[0]
            hits["canonical"] += judge.score(src, c, "", t.target.to_json()).semantic == 10
        assert hits["canonical"] > hits["original"] + 10, (profile, hits)


def test_expert_accepts_a_perfect_edit_and_rewrites_a_failed_one():
    t = next(t for t in TASKS if t.style == "vague")
    expert = SyntheticExpert(error_rate=0.0)
    src = render_png(t.source, 64)
    good = expert.think(
        [ThinkRequest(src, render_png(t.target, 64), t.instruction, t.instruction, t.target.to_json())]
    )[0]
    assert good.format_ok and good.satisfied
    bad = expert.think([ThinkRequest(src, src, t.instruction, t.instruction, t.target.to_json())])[0]
    assert bad.format_ok and not bad.satisfied and bad.answer == canonical_instruction(t.op)
    again = expert.think([ThinkRequest(src, src, t.instruction, bad.answer, t.target.to_json())])[0]
    assert again.answer == canonical_instruction(t.op, 1)  # asks in other words, not the same again


def test_png_decoding_rejects_garbage():
    with pytest.raises(ValueError, match="not a readable image"):
        from_png(b"\x89PNG\r\n\x1a\n garbage")


def test_held_out_benchmark_shares_no_source_scene_with_training():
    """The shipped params: every held-out task (evaluate) starts from a scene no training task (generate, the
    synthetic source) starts from; before the scene partition 1 of the 200 did."""
    from editthinker.config import load_params
    from editthinker.world.tasks import make_tasks, scene_partition

    p = load_params(Path(__file__).parents[1] / "params.yaml")
    w = p.world
    train = make_tasks(p.generate.seed, range(p.generate.num_tasks), w.min_shapes, w.max_shapes, w.styles)
    for s in p.sources:
        if s.kind == "synthetic":
            train |= {-1 - i: t for i, t in make_tasks(s.seed, range(s.num_tasks), w.min_shapes, w.max_shapes,
                                                       w.styles).items()}  # fmt: skip
    held = make_tasks(p.evaluate.seed, range(p.evaluate.num_tasks), w.min_shapes, w.max_shapes, w.styles,
                      partition="held_out")  # fmt: skip
    train_scenes = {t.source.to_json() for t in train.values()}
    assert len(held) == p.evaluate.num_tasks
    assert not train_scenes & {t.source.to_json() for t in held.values()}
    assert {scene_partition(t.source) for t in train.values()} == {"train"}
    assert {scene_partition(t.source) for t in held.values()} == {"held_out"}


def test_scene_partition_keeps_tasks_pure_and_rejects_unknown_parts():
    from editthinker.world.tasks import make_task

    a = make_task(3, 7, 2, 4, {"canonical": 1.0}, partition="held_out")
    assert a == make_task(3, 7, 2, 4, {"canonical": 1.0}, partition="held_out")
    assert a.source != make_task(3, 7, 2, 4, {"canonical": 1.0}).source  # same seed and index, other part
    with pytest.raises(ValueError, match="partition"):
        make_task(3, 7, 2, 4, {"canonical": 1.0}, partition="test")
