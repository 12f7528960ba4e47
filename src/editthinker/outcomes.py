"""Episode outcomes on the synthetic world's tasks: success, per-item outcomes, summaries, and a thinker checkpoint
run on tasks of the world's training part (the rl stage's validation). The evaluate stage reports with these; the
rl stage chooses its output with them (stages never import each other)."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from scipy.stats import binomtest

from editthinker.backends.factory import build_editors, build_judge, close_roles, load_vlm_thinker
from editthinker.config import InferenceConfig, Params
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_tasks


def success(e: Episode, params: Params) -> bool:
    s = e.final.score
    assert s is not None
    return s.semantic >= params.evaluate.success_semantic and s.quality >= params.evaluate.success_quality


def per_item(episodes: list[Episode], editor: str, params: Params) -> dict[str, list[Any]]:
    """Each item's outcome (item = task x editor, named `<task id>@<editor>`): what paired comparisons and the
    promotion rule read."""
    scores = [e.final.score for e in episodes]
    if any(s is None for s in scores):
        raise ValueError("evaluate: an episode ended without a judge score")
    return {
        "item": [f"{e.start.episode_id}@{editor}" for e in episodes],
        "success": [success(e, params) for e in episodes],
        "overall": [s.overall for s in scores if s is not None],
        "semantic": [s.semantic for s in scores if s is not None],
        "critiques": [sum(t.critique is not None for t in e.turns) for e in episodes],
        "format_failures": [e.format_failures for e in episodes],
    }


def critique_accuracy(episodes: list[Episode], params: Params) -> dict[str, float | None]:
    """How the thinker reads the edits it critiques (the judge's score of the same image is the truth):
    `satisfied_on_failed` = share of failed edits it called satisfied (it must look at the image to know),
    `rewrote_on_success` = share of successful edits it rewrote anyway. None where there was no such edit."""
    ev = params.evaluate
    failed = satisfied_failed = succeeded = rewrote_succeeded = 0
    for e in episodes:
        for t in e.turns:
            v, sc = t.critique, t.score
            if v is None or sc is None or not v.format_ok:
                continue
            ok = sc.semantic >= ev.success_semantic and sc.quality >= ev.success_quality
            failed += not ok
            satisfied_failed += (not ok) and bool(v.satisfied)
            succeeded += ok
            rewrote_succeeded += ok and not v.satisfied
    return {
        "satisfied_on_failed": satisfied_failed / failed if failed else None,
        "rewrote_on_success": rewrote_succeeded / succeeded if succeeded else None,
    }


def summarise(episodes: list[Episode], params: Params) -> dict[str, Any]:
    n = len(episodes)
    k = sum(success(e, params) for e in episodes)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    scores = [e.final.score for e in episodes if e.final.score is not None]
    critiques = sum(t.critique is not None for e in episodes for t in e.turns)
    failures = sum(e.format_failures for e in episodes)
    return {
        "n": n,
        "success_rate": k / n,
        "success_ci95": [ci.low, ci.high],
        "semantic": fmean(s.semantic for s in scores),
        "quality": fmean(s.quality for s in scores),
        "overall": fmean(s.overall for s in scores),
        "turns": fmean(len(e.turns) for e in episodes),
        "format_failures": failures,
        "format_failure_rate": failures / critiques if critiques else 0.0,
        **critique_accuracy(episodes, params),
    }


def world_starts(params: Params, seed: int, num_tasks: int, partition: str) -> list[EpisodeStart]:
    """The loop's starts for the first `num_tasks` tasks of world seed `seed`, drawn from `partition` of scene
    space (`world.tasks.scene_partition`): each task's rendered source, instruction and target scene."""
    w = params.world
    tasks = make_tasks(seed, range(num_tasks), w.min_shapes, w.max_shapes, w.styles, partition=partition)
    return [EpisodeStart(t.task_id, render_png(t.source, w.image_size), t.instruction, i, t.target.to_json())
            for i, t in tasks.items()]  # fmt: skip


def checkpoint_outcomes(params: Params, checkpoints: dict[str, Path], num_tasks: int, seed: int, max_turns: int,
               inference: InferenceConfig) -> dict[str, Any]:  # fmt: skip
    """Each checkpoint's thinker (run as `inference` says) with every editor on `num_tasks` validation tasks: tasks
    of world seed `seed` drawn from the world's training part (never the held-out benchmark's scenes), the loop and
    judge as `evaluate` runs them. Per checkpoint its summary (`summarise` over every editor) and per-item
    outcomes."""
    starts = world_starts(params, seed, num_tasks, "train")
    editors, judge = build_editors(params), build_judge(params.judge)
    out: dict[str, Any] = {}
    for name, checkpoint in checkpoints.items():
        thinker = load_vlm_thinker(checkpoint, params.thinker, inference)
        everything: list[Episode] = []
        items: dict[str, list[Any]] = {}
        for editor_name, editor in editors.items():
            episodes = run_episodes(starts, editor, thinker, judge, max_turns)
            everything += episodes
            for key, values in per_item(episodes, editor_name, params).items():
                items.setdefault(key, []).extend(values)
        out[name] = {"summary": summarise(everything, params), "items": items}
    close_roles(*editors.values(), judge)
    return out
