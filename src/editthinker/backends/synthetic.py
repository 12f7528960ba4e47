"""Synthetic editors, expert and judge over the verifiable world.

- An editor reads the source pixels (exact perception), reads the instruction through the template table
  with its own limited knowledge, applies the edit and renders it, with seeded slips and artifacts.
  Canonical wording is understood by every editor; paraphrases, relative references and indirect colours
  only by some; vague wording leaves a value to guess. So the first edit is unreliable the way real
  editors' are, and a better instruction really helps.
- The expert sees the privileged target scene and answers as the method's expert does.
- The judge reads the source, the edit and the target scene from pixels and scores semantic and quality.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from editthinker.protocol import Verdict, format_expert_answer, parse_expert_answer
from editthinker.roles import EditRequest, JudgeScore, ScoreRequest, ThinkRequest
from editthinker.world import language as lang
from editthinker.world.perception import perceive_png
from editthinker.world.scene import BACKGROUNDS, POSITIONS, SHAPE_COLOURS, SIZES, Scene, from_png, render_array, to_png
from editthinker.world.tasks import EditOp, apply_op, canonical_instruction


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from its arguments."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class EditorProfile:
    """What an editor understands and how often it slips."""

    paraphrase: dict[str, float]  # op -> share of that op's paraphrase templates the editor knows
    refs: frozenset[str]  # reference kinds it resolves (colour_shape always)
    indirect: float  # share of indirect colour phrases it knows
    slip: float  # chance to get an understood instruction wrong anyway
    artifact: float  # chance of visible artifacts


PROFILES: dict[str, EditorProfile] = {
    "painter": EditorProfile(
        paraphrase={"recolor": 0.9, "background": 0.9, "add": 0.6, "move": 0.2, "resize": 0.3, "remove": 0.5},
        refs=frozenset({"shape_only", "colour_only", "largest", "smallest"}),
        indirect=0.6,
        slip=0.08,
        artifact=0.10,
    ),
    "mover": EditorProfile(
        paraphrase={"recolor": 0.3, "background": 0.4, "add": 0.5, "move": 0.9, "resize": 0.8, "remove": 0.9},
        refs=frozenset({"shape_only", "leftmost", "rightmost", "topmost", "bottommost"}),
        indirect=0.3,
        slip=0.12,
        artifact=0.15,
    ),
}


class SyntheticEditor:
    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    def __init__(self, name: str, profile: str, image_size: int):
        if profile not in PROFILES:
            raise ValueError(f"unknown synthetic editor profile {profile!r}; known: {sorted(PROFILES)}")
        self.name = name
        self.profile_name = profile
        self.profile = PROFILES[profile]
        self.image_size = image_size
        self.model_id = f"synthetic-editor/{profile}"

    # -- knowledge -------------------------------------------------------------------------------
    def knows_template(self, t: lang.Template) -> bool:
        if t.style != "paraphrase":
            return True
        return _unit(self.profile_name, t.id) < self.profile.paraphrase.get(t.op, 0.0)

    def knows_indirect(self, phrase: str) -> bool:
        return _unit(self.profile_name, phrase) < self.profile.indirect

    # -- reading ---------------------------------------------------------------------------------
    def understand(self, instruction: str, scene: Scene, rng: np.random.Generator) -> EditOp | None:
        """The edit this editor reads from the instruction; values it cannot read are guessed."""
        reading = lang.read(instruction)
        if reading is None or not self.knows_template(reading.template):
            return None
        t, slots = reading.template, reading.slots
        subject = None
        if t.op not in ("add", "background"):
            if "obj" in slots:
                kind, value = lang.parse_ref(slots["obj"])
                if kind != "colour_shape" and kind not in self.profile.refs:
                    kind = "unknown"
                subject = lang.resolve_ref(kind, scene, value) if kind != "unknown" else None
            if subject is None:  # a reference it cannot resolve: it edits some shape
                if not scene.shapes:
                    return None
                subject = scene.shapes[int(rng.integers(len(scene.shapes)))]
        values: dict[str, str] = {}
        free = [p for p in POSITIONS if p not in {s.position for s in scene.shapes}]
        if t.op in ("recolor", "add", "background"):
            phrase = slots.get("colour")
            colour = None
            if phrase is not None:
                colour = phrase if " " not in phrase else lang.indirect_colour(phrase)
                if " " in phrase and not self.knows_indirect(phrase):
                    colour = None
            pool = BACKGROUNDS if t.op == "background" else SHAPE_COLOURS
            values["colour"] = colour or str(rng.choice(pool))
        if t.op in ("move", "add"):
            if not free:
                return None
            values["pos"] = slots.get("pos") or str(rng.choice(free))
        if t.op in ("resize", "add"):
            values["size"] = slots.get("size") or str(rng.choice(SIZES))
        if t.op == "add":
            values["shape"] = slots.get("shape") or str(rng.choice(lang.SHAPES))
        return EditOp(t.op, subject, values)

    # -- editing ---------------------------------------------------------------------------------
    def _edit_one(self, req: EditRequest) -> bytes:
        rng = np.random.default_rng(
            int.from_bytes(hashlib.sha256(f"{self.name}|{req.seed}|{req.instruction}".encode()).digest()[:8], "big")
        )
        scene = perceive_png(req.source_png).scene
        result = scene
        if scene is not None:
            op = self.understand(req.instruction, scene, rng)
            if op is not None and rng.random() < self.profile.slip:
                op = self._slip(op, scene, rng)
            if op is not None:
                try:
                    result = apply_op(scene, op)
                except ValueError:
                    result = scene
        pixels = render_array(result, self.image_size) if result is not None else from_png(req.source_png)
        if rng.random() < self.profile.artifact:
            self._speckle(pixels, rng)
        return to_png(pixels)

    def _slip(self, op: EditOp, scene: Scene, rng: np.random.Generator) -> EditOp | None:
        """Understood, but done wrong: a wrong value or a wrong shape."""
        if rng.random() < 0.3:
            return None
        values = dict(op.values)
        if "colour" in values:
            pool = BACKGROUNDS if op.op == "background" else SHAPE_COLOURS
            values["colour"] = str(rng.choice([c for c in pool if c != values["colour"]]))
        elif "size" in values:
            values["size"] = str(rng.choice([z for z in SIZES if z != values["size"]]))
        elif op.subject is not None and len(scene.shapes) > 1:
            others = [s for s in scene.shapes if s != op.subject]
            return EditOp(op.op, others[int(rng.integers(len(others)))], values)
        return EditOp(op.op, op.subject, values)

    @staticmethod
    def _speckle(pixels: np.ndarray, rng: np.random.Generator) -> None:
        h, w, _ = pixels.shape
        n = int(h * w * rng.uniform(0.004, 0.02))
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        pixels[ys, xs] = rng.integers(0, 256, (n, 3), dtype=np.uint8) | np.uint8(1)  # odd values: off-palette

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        return [self._edit_one(r) for r in requests]


# -- judge ---------------------------------------------------------------------------------------
def _cells(scene: Scene) -> dict[str, tuple[str, str, str]]:
    return {s.position: (s.shape, s.colour, s.size) for s in scene.shapes}


def semantic_score(source: Scene, result: Scene | None, target: Scene) -> float:
    """0-10: how much of the intended change was made, less unintended changes. 10 iff result == target."""
    if result is None:
        return 0.0
    if result == target:
        return 10.0
    src, res, tgt = _cells(source), _cells(result), _cells(target)
    Cell = tuple[str, str, str] | str | None
    units: list[tuple[str, Cell, Cell, Cell]] = [("bg", source.background, result.background, target.background)]
    units += [(p, src.get(p), res.get(p), tgt.get(p)) for p in POSITIONS]
    intended = [u for u in units if u[1] != u[3]]
    unintended = [u for u in units if u[1] == u[3] and u[2] != u[3]]
    achieved = 0.0
    for _, s, r, t in intended:
        if r == t:
            achieved += 1.0
        elif isinstance(s, tuple) and isinstance(r, tuple) and isinstance(t, tuple):
            changed = [i for i in range(3) if s[i] != t[i]]
            kept = all(r[i] == t[i] for i in range(3) if i not in changed)
            achieved += (sum(r[i] == t[i] for i in changed) / len(changed)) * (1.0 if kept else 0.5)
    frac = achieved / max(1, len(intended)) - 0.25 * len(unintended)
    return float(min(9, max(0, int(np.floor(10 * frac)))))


def quality_score(artifact_fraction: float) -> float:
    return float(max(0, min(10, 10 - int(np.ceil(artifact_fraction * 400 - 1e-9)))))


class SyntheticJudge:
    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    name = "synthetic-judge"
    model_id = "synthetic-judge/exact-v1"

    def score(self, source_png: bytes, edited_png: bytes, instruction: str, reference: str | None) -> JudgeScore:
        if reference is None:
            raise ValueError("the synthetic judge needs the target scene (reference)")
        target = Scene.from_json(reference)
        source = perceive_png(source_png).scene
        seen = perceive_png(edited_png)
        if source is None:
            raise ValueError("the source image could not be read")
        return JudgeScore(semantic_score(source, seen.scene, target), quality_score(seen.artifact_fraction))

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        return [self.score(r.source_png, r.edited_png, r.instruction, r.reference) for r in requests]


# -- expert --------------------------------------------------------------------------------------
def describe_gap(seen: Scene | None, target: Scene, artifact: float) -> str:
    """A short reason naming the first thing that differs from the target."""
    if seen is None:
        return "the edited image cannot be read as a clean scene."
    if seen.background != target.background:
        return f"the background is {seen.background}; it should be {target.background}."
    got, want = _cells(seen), _cells(target)
    for p in POSITIONS:
        g, w = got.get(p), want.get(p)
        if g == w:
            continue
        if w is None:
            return f"there is a {g[1]} {g[0]} at the {p} that should not be there."  # type: ignore[index]
        if g is None:
            return f"a {w[2]} {w[1]} {w[0]} is missing at the {p}."
        return f"the shape at the {p} is a {g[2]} {g[1]} {g[0]}; it should be a {w[2]} {w[1]} {w[0]}."
    if artifact > 0:
        return "the edit is right but the image has speckle artifacts."
    return "the edit matches the instruction."


class SyntheticExpert:
    """Plays the thinker while building trajectories. Sees the target scene (privileged)."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    name = "synthetic-expert"

    def __init__(self, error_rate: float, seed: int = 0):
        self.error_rate = error_rate
        self.seed = seed
        self.model_id = f"synthetic-expert/oracle-err{error_rate:g}"

    def _answer(self, req: ThinkRequest) -> str:
        if req.reference is None:
            raise ValueError("the synthetic expert needs the target scene (reference)")
        target = Scene.from_json(req.reference)
        source = perceive_png(req.source_png).scene
        seen = perceive_png(req.previous_png)
        ok = seen.scene == target and seen.artifact_fraction == 0
        u = _unit(self.seed, req.original_instruction, req.previous_instruction, req.reference)
        wrong = u < self.error_rate
        satisfied = ok != wrong  # an erring expert accepts a bad edit or rejects a good one
        reason = describe_gap(seen.scene, target, seen.artifact_fraction)
        if satisfied or source is None:
            return format_expert_answer(True, reason, "")
        op = _diff_op(source, target)
        # ask in the next canonical wording when the last one was canonical already, so a slip of the
        # editor (seeded by the instruction) is not simply repeated
        variants = [canonical_instruction(op, k) for k in range(len(_CANONICAL[op.op]))]
        prev = [k for k, v in enumerate(variants) if lang_equal(v, req.previous_instruction)]
        prompt = variants[(prev[0] + 1) % len(variants)] if prev else variants[0]
        return format_expert_answer(False, reason, prompt)

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        return [parse_expert_answer(self._answer(r)) for r in requests]


_CANONICAL = {op: [t for t in lang.TEMPLATES if t.op == op and t.style == "canonical"] for op in lang.OPS}


def lang_equal(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _diff_op(source: Scene, target: Scene) -> EditOp:
    """The single edit that turns `source` into `target` (tasks are one edit each)."""
    if source.background != target.background:
        return EditOp("background", None, {"colour": target.background})
    before, after = set(source.shapes), set(target.shapes)
    gone, new = sorted(before - after), sorted(after - before)
    if gone and not new:
        return EditOp("remove", gone[0], {})
    if new and not gone:
        n = new[0]
        return EditOp("add", None, {"size": n.size, "colour": n.colour, "shape": n.shape, "pos": n.position})
    if not gone:
        raise ValueError("source and target are the same scene")
    g, n = gone[0], new[0]
    if g.position != n.position:
        return EditOp("move", g, {"pos": n.position})
    if g.colour != n.colour:
        return EditOp("recolor", g, {"colour": n.colour})
    return EditOp("resize", g, {"size": n.size})
