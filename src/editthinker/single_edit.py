"""`editthinker edit`: Think-while-Edit on one image, written out for a person to look at.

Runs `loop.run_episodes` on one (image, instruction) with an editor from params and a thinker (a trained
checkpoint folder, `expert` for params' expert, or `none` for the editor alone), then writes into `out`:
source.png, turn-1.png ... turn-N.png, trace.json (instructions, critiques, judge scores when a judge can
score, stop reason, timings) and index.html (the source and every turn with its instruction).
The folder is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import html
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from editthinker.backends.factory import build_editor, build_expert, build_judge, load_vlm_thinker
from editthinker.config import Params
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.protocol import Verdict
from editthinker.roles import Editor, EditRequest, Judge, JudgeScore, ScoreRequest, Thinker, ThinkRequest
from editthinker.storage import atomic_dir

THINKER_NONE, THINKER_EXPERT, THINKER_MODEL = "none", "expert", "model"


class _Clock:
    """Seconds spent inside model calls, by role, and the time at least one call was in flight (`busy`): calls
    can overlap (the loop's judge scores on a worker thread), so what the loop costs on top is wall - busy."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {"editor": 0.0, "thinker": 0.0, "judge": 0.0}
        self.calls: dict[str, int] = {"editor": 0, "thinker": 0, "judge": 0}
        self.busy = 0.0
        self._active, self._since, self._lock = 0, 0.0, threading.Lock()

    @contextmanager
    def timing(self, role: str) -> Iterator[None]:
        """One call of `role`: its time counts whether it returns or raises."""
        t0 = time.perf_counter()
        with self._lock:
            if self._active == 0:
                self._since = t0
            self._active += 1
        try:
            yield
        finally:
            t1 = time.perf_counter()
            with self._lock:
                self.spent[role] += t1 - t0
                self.calls[role] += 1
                self._active -= 1
                if self._active == 0:
                    self.busy += t1 - self._since


class _TimedEditor:
    def __init__(self, inner: Editor, clock: _Clock):
        self.inner, self.clock, self.name, self.model_id = inner, clock, inner.name, inner.model_id

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        with self.clock.timing("editor"):
            return self.inner.edit(requests)


class _TimedThinker:
    def __init__(self, inner: Thinker, clock: _Clock):
        self.inner, self.clock, self.name, self.model_id = inner, clock, inner.name, inner.model_id

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        with self.clock.timing("thinker"):
            return self.inner.think(requests)


class _TimedJudge:
    def __init__(self, inner: Judge, clock: _Clock):
        self.inner, self.clock, self.name, self.model_id = inner, clock, inner.name, inner.model_id

    def score(self, source_png: bytes, edited_png: bytes, instruction: str, reference: str | None) -> JudgeScore:
        with self.clock.timing("judge"):
            return self.inner.score(source_png, edited_png, instruction, reference)

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        with self.clock.timing("judge"):
            return self.inner.score_many(requests)


def read_png(path: Path) -> bytes:
    """Any image file PIL reads, as RGB PNG bytes."""
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _thinker(params: Params, spec: str, seed: int) -> Thinker | None:
    if spec == THINKER_NONE:
        return None
    if spec == THINKER_EXPERT:
        return build_expert(params.expert, seed)
    if spec == THINKER_MODEL:  # a released thinker: params.inference.thinker_model, a hub id or a folder
        if params.inference.thinker_model is None:
            raise ValueError(
                f"thinker: {THINKER_MODEL!r} needs params inference.thinker_model (e.g. Qwen/Qwen3-VL-8B-Instruct)"
            )
        return load_vlm_thinker(params.inference.thinker_model, params.thinker, params.inference)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(
            f"thinker: {spec!r} is neither a checkpoint folder, {THINKER_MODEL!r} (params inference.thinker_model), "
            f"{THINKER_EXPERT!r} nor {THINKER_NONE!r}"
        )
    return load_vlm_thinker(path, params.thinker, params.inference)


def _judge(params: Params, reference: str | None) -> tuple[Judge | None, str]:
    if params.judge.kind == "synthetic" and reference is None:
        return None, "no judge scores: the synthetic judge needs the target scene (--reference)"
    return build_judge(params.judge), ""


def _verdict(v: Verdict | None) -> dict[str, Any] | None:
    return asdict(v) if v is not None else None


def _score(s: JudgeScore | None) -> dict[str, float] | None:
    return None if s is None else {"semantic": s.semantic, "quality": s.quality, "overall": round(s.overall, 4)}


def trace_of(ep: Episode, editor: Editor, thinker: Thinker | None, judge: Judge | None) -> dict[str, Any]:
    return {
        "instruction": ep.start.instruction,
        "seed": ep.start.seed,
        "editor": {"name": editor.name, "model_id": editor.model_id},
        "thinker": None if thinker is None else {"name": thinker.name, "model_id": thinker.model_id},
        "judge": None if judge is None else {"name": judge.name, "model_id": judge.model_id},
        "stop_reason": ep.stop_reason,
        "format_failures": ep.format_failures,
        "final_image": f"turn-{ep.final.turn}.png",
        "turns": [
            {
                "turn": t.turn,
                "instruction": t.instruction,
                "image": f"turn-{t.turn}.png",
                "score": _score(t.score),
                "critique": _verdict(t.critique),
            }
            for t in ep.turns
        ],
    }


def render_html(trace: dict[str, Any]) -> str:
    e = html.escape
    fig = '<figure><img src="{}" alt="{}"><figcaption>{}</figcaption></figure>'
    cells = [fig.format("source.png", "source", "<b>source</b><br>" + e(trace["instruction"]))]
    for t in trace["turns"]:
        lines = [f"<b>turn {t['turn']}</b>", e(t["instruction"])]
        if t["score"]:
            s = t["score"]
            lines.append(f"judge: semantic {s['semantic']:g}, quality {s['quality']:g}, overall {s['overall']:.2f}")
        c = t["critique"]
        if c:
            lines.append(f"<i>thinker:</i> {e(c['reason'] or c['error'] or '')}")
        cells.append(fig.format(e(t["image"]), f"turn {t['turn']}", "<br>".join(lines)))
    who = e(trace["editor"]["model_id"]) + (f" + {e(trace['thinker']['model_id'])}" if trace["thinker"] else " alone")
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>editthinker edit</title><style>'
        "body{font-family:sans-serif;margin:1em}.strip{display:flex;gap:1em;align-items:flex-start;overflow-x:auto}"
        "figure{margin:0;width:256px}img{width:256px;image-rendering:pixelated;border:1px solid #999}"
        "figcaption{font-size:13px}</style></head><body>\n"
        f"<h1>Think-while-Edit</h1><p>{who}; stopped: {e(trace['stop_reason'])}; "
        f'{len(trace["turns"])} turn(s)</p>\n<div class="strip">\n' + "\n".join(cells) + "\n</div></body></html>\n"
    )


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "trace.json").exists())):
        raise ValueError(f"{out} exists and is not the output of an earlier edit; not overwriting it")


def _write(out: Path, files: dict[str, bytes]) -> None:
    _check_out(out)
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def run(
    params: Params,
    image: Path,
    instruction: str,
    editor_name: str,
    thinker: str,
    out: Path,
    max_turns: int | None = None,
    seed: int = 0,
    reference: str | None = None,
) -> dict[str, Any]:
    """Edit one image with the loop; write images, trace.json and index.html into `out`; return the trace."""
    cfgs = {e.name: e for e in params.editors}
    if editor_name not in cfgs:
        raise ValueError(f"editor {editor_name!r} is not in params.editors {sorted(cfgs)}")
    turns = max_turns or params.evaluate.max_turns
    _check_out(out)  # before any model is loaded
    source = read_png(image)
    clock = _Clock()
    editor = build_editor(cfgs[editor_name], params.world.image_size)
    brain = _thinker(params, thinker, seed)
    judge, judge_note = _judge(params, reference)
    t0 = time.perf_counter()
    (ep,) = run_episodes(
        [EpisodeStart("edit", source, instruction, seed, reference)],
        _TimedEditor(editor, clock),
        _TimedThinker(brain, clock) if brain is not None else None,
        _TimedJudge(judge, clock) if judge is not None else None,
        turns,
    )
    wall = time.perf_counter() - t0
    trace = trace_of(ep, editor, brain, judge)
    trace["max_turns"] = turns
    if judge_note:
        trace["judge_note"] = judge_note
    trace["timing"] = {
        "loop_s": round(wall, 4),
        "model_s": {k: round(v, 4) for k, v in clock.spent.items()},
        "calls": clock.calls,
        "overhead_s": round(wall - clock.busy, 6),  # the loop's own cost: no model call in flight
        "overhead_fraction": round((wall - clock.busy) / wall, 6) if wall > 0 else 0.0,
    }
    files = {"source.png": source, "trace.json": (json.dumps(trace, indent=2) + "\n").encode()}
    files |= {f"turn-{t.turn}.png": t.image_png for t in ep.turns}
    files["index.html"] = render_html(trace).encode()
    _write(out, files)
    return trace
