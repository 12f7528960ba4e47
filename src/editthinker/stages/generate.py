"""Stage 1, generate: multi-turn edit trajectories, the expert playing the thinker, over all editors.

API faults never change the data: a call of the expert or the judge that still fails after its retries fails
its chunk of episodes (`GenerationFailed`, naming the editor and the tasks), and with it the run, which writes
nothing; a rerun does the chunk again, every call answered before coming from the request cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from editthinker.backends.factory import build_editors, build_expert, build_judge
from editthinker.backends.openai_api import OpenAICallError
from editthinker.config import Params
from editthinker.lineage import make_lineage
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.records import TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import sections_of
from editthinker.storage import writer_lock
from editthinker.usage import Usage, api_usage, sum_usage
from editthinker.world.scene import render_png
from editthinker.world.tasks import Task, make_tasks

SECTIONS = sections_of("generate")
CHUNK = 64  # episodes run in lockstep, so batched backends batch; a chunk succeeds or fails whole


class GenerationFailed(RuntimeError):
    """A chunk of episodes could not be generated (an API call failed after its retries); nothing was written."""


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


def _generate_rows(params: Params, indices: range) -> tuple[list[dict[str, Any]], dict[str, str], Usage]:
    """Trajectory rows of the world tasks at `indices`, sorted, the model ids that made them and API usage.

    A task's episode depends only on the task, its editor (task index modulo the number of editors) and the
    seeds, never on which other tasks run beside it: any partition of the tasks gives the same rows.
    """
    g = params.generate
    editors = build_editors(params)
    expert = build_expert(params.expert, g.seed)
    judge = build_judge(params.judge)
    names = list(editors)
    w = params.world
    tasks = make_tasks(g.seed, indices, w.min_shapes, w.max_shapes, w.styles)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(indices), desc="generate", unit="traj", disable=None)
    for name in names:
        # split across editors
        mine = [(i, tasks[i]) for i in indices if i % len(names) == names.index(name)]
        for k in range(0, len(mine), CHUNK):
            chunk = mine[k : k + CHUNK]
            starts = [
                EpisodeStart(
                    t.task_id, render_png(t.source, params.world.image_size), t.instruction, i, t.target.to_json()
                )
                for i, t in chunk
            ]
            try:
                episodes = run_episodes(starts, editors[name], expert, judge, g.max_turns)
            except OpenAICallError as exc:
                bar.close()
                raise GenerationFailed(
                    f"generate: the chunk of editor {name!r}, tasks {chunk[0][1].task_id}..{chunk[-1][1].task_id}, "
                    f"failed and nothing was written (a rerun repeats it; answered calls come from the request "
                    f"cache): {exc}"
                ) from exc
            for (_, t), e in zip(chunk, episodes, strict=True):
                rows.extend(trajectory_rows(t, name, e))
            bar.update(len(chunk))
    bar.close()
    rows.sort(key=lambda r: (r["trajectory_id"], r["turn"]))
    models = {f"editor:{n}": e.model_id for n, e in editors.items()}
    models.update(expert=expert.model_id, judge=judge.model_id)
    return rows, models, api_usage(expert=expert, judge=judge)


def _write(params: Params, out_dir: Path, rows: list[dict[str, Any]], models: dict[str, str],
           usage: Usage) -> dict[str, Any]:  # fmt: skip
    g = params.generate
    rows.sort(key=lambda r: (r["trajectory_id"], r["turn"]))
    per_shard = max(1, -(-len(rows) // g.shards))
    extra: dict[str, Any] = {
        "lineage": make_lineage("generate", params, SECTIONS, {}, models),
        "trajectories": g.num_tasks,
    }
    if usage:
        extra["api_usage"] = usage
    return write_dataset(out_dir, rows, TRAJECTORY_SCHEMA, per_shard, extra)


def run(params: Params, out_dir: Path) -> dict[str, Any]:
    with writer_lock(out_dir):
        rows, models, usage = _generate_rows(params, range(params.generate.num_tasks))
        return _write(params, out_dir, rows, models, usage)


def shard_tasks(params: Params, shard: int) -> range:
    """The task indices of generation shard `shard` of `generate.shards`: contiguous, sizes differ by <= 1."""
    g = params.generate
    if not 0 <= shard < g.shards:
        raise ValueError(f"generate: shard {shard} is outside 0..{g.shards - 1} (generate.shards = {g.shards})")
    return range(shard * g.num_tasks // g.shards, (shard + 1) * g.num_tasks // g.shards)


def run_shard(params: Params, shard: int, out_dir: Path) -> dict[str, Any]:
    """One generation shard (for a fan-out): the rows of `shard_tasks(params, shard)`, as one parquet file.

    `gather` over all shards' outputs writes the same dataset, byte for byte, as `run`.
    """
    indices = shard_tasks(params, shard)
    with writer_lock(out_dir):
        rows, models, usage = _generate_rows(params, indices)
        extra: dict[str, Any] = {
            "generate_shard": {"shard": shard, "of": params.generate.shards, "tasks": [indices.start, indices.stop]},
            "lineage": make_lineage("generate", params, SECTIONS, {}, models),
        }
        if usage:
            extra["api_usage"] = usage
        return write_dataset(out_dir, rows, TRAJECTORY_SCHEMA, max(1, len(rows)), extra)


def gather(params: Params, shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Join the outputs of `run_shard` for every shard (in any order) into the dataset `run` writes."""
    with writer_lock(out_dir):
        return _gather(params, shard_dirs, out_dir)


def _gather(params: Params, shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    expected = make_lineage("generate", params, SECTIONS, {}, {})["params_sha256"]
    seen: dict[int, Path] = {}
    models: dict[str, str] | None = None
    rows: list[dict[str, Any]] = []
    usages = []
    for d in shard_dirs:
        manifest = read_manifest(Path(d))
        usages.append(manifest.get("api_usage", {}))
        info, lineage = manifest.get("generate_shard"), manifest.get("lineage", {})
        if info is None:
            raise ValueError(f"generate: {d} is not a generation shard (no generate_shard in its manifest)")
        if lineage.get("params_sha256") != expected or info["of"] != params.generate.shards:
            raise ValueError(f"generate: shard {d} was made with other params than these")
        if info["shard"] in seen:
            raise ValueError(f"generate: shard {info['shard']} given twice ({seen[info['shard']]}, {d})")
        if models is not None and lineage["models"] != models:
            raise ValueError(f"generate: shard {d} was made by other models ({lineage['models']} != {models})")
        seen[info["shard"]], models = Path(d), lineage["models"]
        rows.extend(iter_rows(Path(d)))
    missing = sorted(set(range(params.generate.shards)) - set(seen))
    if missing:
        raise ValueError(f"generate: shards {missing} of {params.generate.shards} are missing")
    return _write(params, out_dir, rows, models or {}, sum_usage(usages))
