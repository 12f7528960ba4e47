"""Stage 1, generate: multi-turn edit trajectories, the expert playing the thinker, over all editors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from editthinker.backends.registry import build_editors, build_expert, build_judge
from editthinker.config import Params
from editthinker.lineage import make_lineage
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.records import TRAJECTORY_SCHEMA, write_dataset
from editthinker.world.scene import render_png
from editthinker.world.tasks import Task, make_task

SECTIONS = ("world", "editors", "expert", "judge", "generate")
CHUNK = 64  # episodes run in lockstep, so batched backends batch


def world_tasks(params: Params, seed: int, count: int) -> list[Task]:
    w = params.world
    return [make_task(seed, i, w.min_shapes, w.max_shapes, w.styles) for i in range(count)]


def trajectory_rows(task: Task, editor: str, episode: Episode) -> Iterator[dict[str, Any]]:
    for t in episode.turns:
        c = t.critique if t.critique is not None and t.critique.format_ok else None
        yield {
            "trajectory_id": f"{task.task_id}-{editor}",
            "task_id": task.task_id,
            "editor": editor,
            "op": task.op.op,
            "style": task.style,
            "seed": episode.start.seed,
            "source_scene": task.source.to_json(),
            "target_scene": task.target.to_json(),
            "source_png": episode.start.source_png,
            "original_instruction": task.instruction,
            "turn": t.turn,
            "instruction": t.instruction,
            "image_png": t.image_png,
            "semantic": t.score.semantic if t.score else None,
            "quality": t.score.quality if t.score else None,
            "overall": t.score.overall if t.score else None,
            "has_critique": c is not None,
            "critique_raw": c.raw if c else "",
            "critique_reason": c.reason if c else "",
            "critique_satisfied": bool(c and c.satisfied),
            "next_instruction": c.answer if c and not c.satisfied else "",
            "stop_reason": episode.stop_reason,
        }


def run(params: Params, out_dir: Path) -> dict[str, Any]:
    g = params.generate
    editors = build_editors(params)
    expert = build_expert(params.expert, g.seed)
    judge = build_judge(params.judge)
    names = list(editors)
    tasks = world_tasks(params, g.seed, g.num_tasks)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="generate", unit="traj", disable=None)
    for name in names:
        mine = [(i, t) for i, t in enumerate(tasks) if i % len(names) == names.index(name)]  # split across editors
        for k in range(0, len(mine), CHUNK):
            chunk = mine[k : k + CHUNK]
            starts = [
                EpisodeStart(
                    t.task_id, render_png(t.source, params.world.image_size), t.instruction, i, t.target.to_json()
                )
                for i, t in chunk
            ]
            episodes = run_episodes(starts, editors[name], expert, judge, g.max_turns)
            for (_, t), e in zip(chunk, episodes, strict=True):
                rows.extend(trajectory_rows(t, name, e))
            bar.update(len(chunk))
    bar.close()
    rows.sort(key=lambda r: (r["trajectory_id"], r["turn"]))
    per_shard = max(1, -(-len(rows) // g.shards))
    models = {f"editor:{n}": e.model_id for n, e in editors.items()}
    models.update(expert=expert.model_id, judge=judge.model_id)
    lineage = make_lineage("generate", params, SECTIONS, {}, models)
    return write_dataset(out_dir, rows, TRAJECTORY_SCHEMA, per_shard, {"lineage": lineage, "trajectories": len(tasks)})
