"""Stage 1, generate: multi-turn edit trajectories, the expert playing the thinker, over all editors.

Generation works in units: fixed, contiguous ranges of `generate.unit_tasks` task indices, run
`generate.units_in_flight` at once (worker threads sharing the roles: while one unit waits on the APIs, another
edits and scores). Each finished unit is written to disk at once (atomically) in a work folder beside the output,
`.<output name>.units/<key>/`, keyed by the params that decide the data (generate's sections but `NOT_DATA`), so
other params never resume it. A rerun after a kill (at any moment) loads the finished units instead of generating
them again, so no expert, judge or editor request of a finished unit is repeated; only the units in progress are
redone. When every unit is done, the dataset is assembled from the units (streamed: memory holds one unit, and one
output shard while it is written) with the same rows, order and shards as an uninterrupted run, byte for byte,
and the work folder is removed. `restart=True` (CLI `--restart`) throws the finished units away first.

Tasks come from the synthetic world (params `world`, `generate.seed`; the default and the demo's path) or, with
`tasks` (CLI `--tasks`), from the output folder of `editthinker prepare`: its first `generate.num_tasks` tasks in
its order. A prepared task keeps its source's privileged reference (a synthetic source's target scene, for the
synthetic expert and exact judge); a task from real data has none, so its expert sees only I_src, the last edit,
T_s and T_{t-1}, and its judge must be an API judge: a synthetic expert or judge with reference-less tasks fails
at start-up.

Images are stored once: rows hold sha256s, and the images live in the dataset's content-addressed image store,
`<out>/images/` (`editthinker.images`), which the manifest names under `images`. While units are generated, their
images (the used prepared images, and every edit) wait as files named by their hash in the work folder; the
store is written from them, in hash order, when the dataset is.

`generate.budget` limits the API cost and calls: checked before each unit starts, reaching it stops the run
(`BudgetReached`) once the units running have finished, with every finished unit kept; a rerun with a larger
budget continues. Each unit records its own calls' usage (`usage.usage_scope`), whatever ran beside it.

API faults never change the data: a call of the expert or the judge that still fails after its retries fails
its unit (`GenerationFailed`, naming the editor and the tasks), and with it the run, which writes no dataset: no
unit starts after it, the units running finish, the finished units stay, and a rerun does the unfinished units
again, every call answered before coming from the request cache. An interrupt stops the units running at their
next turn.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import json
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from editthinker.backends.factory import build_editors, build_expert, build_judge, close_roles
from editthinker.backends.openai_api import OpenAICallError
from editthinker.config import Params
from editthinker.images import ImageStore, image_record, merge_stores, sha256_bytes, store_ref, write_image_store
from editthinker.inflight import check, run_in_flight, shared
from editthinker.lineage import code_version, make_lineage
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.records import TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import sections_of
from editthinker.storage import IntegrityError, atomic_write_bytes, write_json, writer_lock
from editthinker.usage import Usage, api_usage, sum_usage, usage_scope
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_tasks

SECTIONS = sections_of("generate")
CHUNK = 64  # episodes run in lockstep, so batched backends batch; a chunk succeeds or fails whole


class GenerationFailed(RuntimeError):
    """A chunk of episodes could not be generated (an API call failed after its retries); its unit was not
    written (the finished units were)."""


class BudgetReached(RuntimeError):
    """`generate.budget` was reached: the run stopped at a unit boundary; its finished units stay for a rerun."""


WORLD_SOURCE = "world"  # the `source` of the embedded synthetic world's tasks
IMAGES = "images"  # the image store's folder inside the dataset (and the staged images' inside the work folder)


@dataclass(frozen=True)
class GenTask:
    """A task as generate runs it, whatever its source: the source image's bytes, the instruction, the task
    type, an optional privileged reference and the source's own fields (`metadata`, a JSON object)."""

    task_id: str
    source: str
    task_type: str
    instruction: str
    source_png: bytes
    reference: str | None
    metadata: str


class WorldTasks:
    """The embedded synthetic world's tasks (`generate.seed`, params `world`)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.count = params.generate.num_tasks
        self.has_reference = True

    def tasks(self, unit: range) -> list[GenTask]:
        g, w = self.params.generate, self.params.world
        made = make_tasks(g.seed, unit, w.min_shapes, w.max_shapes, w.styles)
        return [GenTask(t.task_id, WORLD_SOURCE, t.op.op, t.instruction, render_png(t.source, w.image_size),
                        t.target.to_json(), t.metadata()) for t in (made[i] for i in unit)]  # fmt: skip

    def key(self) -> dict[str, Any]:
        return {}


class PreparedTasks:
    """The first `generate.num_tasks` tasks of a prepared folder (`editthinker prepare`), in its order.

    `stage(folder)` copies the images of those tasks (only those) out of the prepared image store into the work
    folder once, one store shard at a time; `tasks(unit)` then reads a unit's source images from there."""

    COLUMNS = ["task_id", "source", "task_type", "instruction", "image_sha256", "reference", "metadata"]

    def __init__(self, params: Params, folder: Path) -> None:
        from editthinker.records import read_table

        self.folder = Path(folder)
        summary_path = self.folder / "prepared.json"
        if not summary_path.is_file():
            raise ValueError(f"generate: {self.folder} is not a prepared folder (no prepared.json; run "
                             f"'editthinker prepare' first)")  # fmt: skip
        self.summary = json.loads(summary_path.read_text())
        parts = {"tasks": read_manifest(self.folder / "tasks")["dataset_sha256"],
                 "images": read_manifest(self.folder / IMAGES)["dataset_sha256"]}  # fmt: skip
        if parts != self.summary.get("parts_sha256"):
            raise IntegrityError(f"{self.folder}/prepared.json does not name the tasks and images beside it")
        table = read_table(self.folder / "tasks", self.COLUMNS)
        self.count = min(len(table), params.generate.num_tasks)
        self.table = table.slice(0, self.count).combine_chunks()
        self.has_reference = self.table.column("reference").null_count == 0
        self.staged: Path | None = None

    def key(self) -> dict[str, Any]:
        return {"tasks": self.summary["dataset_sha256"], "tasks_used": self.count}

    def stage(self, work: Path) -> None:
        """Copy the used images into `work/images/` (once: a marker says it was done)."""
        self.staged = work / IMAGES
        done = work / "prepared-images.json"
        if done.is_file():
            return
        wanted = set(self.table.column("image_sha256").to_pylist())
        store = ImageStore(self.folder / IMAGES)
        for row in store.iter_images():
            if row["sha256"] in wanted:
                _stage_image(self.staged, row["sha256"], row["bytes"])
                wanted.discard(row["sha256"])
        if wanted:
            raise IntegrityError(f"{self.folder}/images lacks {len(wanted)} images its tasks name, e.g. {min(wanted)}")
        write_json(done, {"images": len(set(self.table.column("image_sha256").to_pylist()))})

    def tasks(self, unit: range) -> list[GenTask]:
        assert self.staged is not None, "stage() first"
        part = self.table.slice(unit.start, len(unit)).to_pylist()
        return [GenTask(r["task_id"], r["source"], r["task_type"], r["instruction"],
                        _staged_path(self.staged, r["image_sha256"]).read_bytes(), r["reference"],
                        r["metadata"] or "{}") for r in part]  # fmt: skip


TaskSource = WorldTasks | PreparedTasks


def _staged_path(folder: Path, sha: str) -> Path:
    return folder / sha[:2] / sha


def _stage_image(folder: Path, sha: str, data: bytes) -> None:
    """An image's bytes as a file named by its hash (written whole or not at all: a kill leaves no half file)."""
    path = _staged_path(folder, sha)
    if not path.exists():
        atomic_write_bytes(path, data)


class _Stager:
    """Stages images (`_stage_image`, by their hash) on a worker thread while the loop waits on its roles, so the
    file writes overlap the API calls; `wait` returns once everything submitted is on disk (a failure is raised)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stage-images")
        self._pending: list[Future[None]] = []

    def submit(self, pngs: Iterable[bytes]) -> None:
        self._pending += [self._pool.submit(self._stage, png) for png in pngs]

    def _stage(self, png: bytes) -> None:
        _stage_image(self.folder, sha256_bytes(png), png)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _StagingEditor:
    """An editor whose edits are also handed to a _Stager as they come back."""

    def __init__(self, editor: Any, stager: _Stager) -> None:
        self.editor, self.stager = editor, stager

    def edit(self, requests: list[Any]) -> list[bytes]:
        images = self.editor.edit(requests)
        self.stager.submit(images)
        return images


def check_roles(params: Params, source: TaskSource) -> None:
    """Reference-less tasks (real data) need an API expert and an API judge: the synthetic ones read the world's
    target scene, which only synthetic tasks have."""
    if source.has_reference:
        return
    kinds = (("expert", params.expert.kind), ("judge", params.judge.kind))
    wrong = [f"{role}.kind is synthetic" for role, kind in kinds if kind == "synthetic"]
    wrong += [f"editor {e.name!r} is of kind synthetic" for e in params.editors if e.kind == "synthetic"]
    if wrong:
        raise ValueError(
            f"generate: the tasks have no privileged reference (real data), but {' and '.join(wrong)}: the synthetic "
            f"expert and judge need the synthetic world's target scene, and the synthetic editor edits only the "
            f"world's scenes. Use kind openai (an OpenAI-compatible API) for the expert and the judge, and a real "
            f"editor (diffusers or http), with real data"
        )


def trajectory_rows(task: GenTask, editor: str, episode: Episode) -> Iterator[dict[str, Any]]:
    source_image = sha256_bytes(episode.start.source_png)
    for t in episode.turns:
        c = t.critique if t.critique is not None and t.critique.format_ok else None
        yield {
            "trajectory_id": f"{task.task_id}-{editor}",
            "task_id": task.task_id,
            "source": task.source,
            "task_type": task.task_type,
            "editor": editor,
            "seed": episode.start.seed,
            "reference": task.reference,
            "metadata": task.metadata,
            "source_image": source_image,
            "original_instruction": task.instruction,
            "turn": t.turn,
            "instruction": t.instruction,
            "image": sha256_bytes(t.image_png),
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


def unit_ranges(indices: range, unit_tasks: int) -> list[range]:
    """The units of the task indices `indices`: the fixed grid of `unit_tasks`-wide index ranges (0, then
    `unit_tasks`, ...), cut to `indices`. The grid does not depend on `indices`, so a run and its shards agree."""
    if not indices:
        return []
    first = indices.start // unit_tasks * unit_tasks
    return [
        range(max(s, indices.start), min(s + unit_tasks, indices.stop)) for s in range(first, indices.stop, unit_tasks)
    ]


NOT_DATA = ("budget", "units_in_flight")  # generate's params that never change the data


def resume_key(params: Params, source: TaskSource | None = None) -> str:
    """What finished units are valid for: generate's sections but `NOT_DATA`, the stage's code, and the prepared
    tasks when there are."""
    dump = params.model_dump(mode="json")
    picked = {k: dump[k] for k in SECTIONS}
    picked["generate"] = {k: v for k, v in picked["generate"].items() if k not in NOT_DATA}
    picked["code_version"] = code_version(__name__)
    if source is not None and source.key():
        picked["tasks"] = source.key()
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def units_root(out_dir: Path) -> Path:
    """The folder beside output `out_dir` that holds its finished units, one subfolder per `resume_key`."""
    out_dir = Path(out_dir).absolute()
    return out_dir.with_name(f".{out_dir.name}.units")


def _unit_dir(work: Path, unit: range) -> Path:
    return work / f"unit-{unit.start:09d}-{unit.stop:09d}"


def _row_key(row: dict[str, Any]) -> tuple[str, int]:
    return row["trajectory_id"], row["turn"]


@dataclass
class _Roles:
    """The editors, the expert and the judge of a run: built once, at the first unit that needs them."""

    editors: dict[str, Any]
    expert: Any
    judge: Any

    @classmethod
    def build(cls, params: Params) -> _Roles:
        """The roles, each callable from the units in flight at once (`inflight.shared`)."""
        editors = {name: shared(e) for name, e in build_editors(params).items()}
        expert = build_expert(params.expert, params.generate.seed)
        return cls(editors, shared(expert), shared(build_judge(params.judge)))

    def close(self) -> None:
        close_roles(*self.editors.values(), self.expert, self.judge)

    def models(self) -> dict[str, str]:
        models = {f"editor:{n}": e.model_id for n, e in self.editors.items()}
        models.update(expert=self.expert.model_id, judge=self.judge.model_id)
        return models

    def usage(self) -> Usage:
        return api_usage(expert=self.expert, judge=self.judge)


def _unit_rows(params: Params, roles: _Roles, unit: range, source: TaskSource | None = None,
               images: dict[str, bytes] | None = None, stager: _Stager | None = None,
               cancel: threading.Event | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Trajectory rows of the tasks of `unit` (the world's unless `source` says), sorted; `images` gets every
    image the rows refer to, by hash; `stager` stages them as they are made (sources first). `cancel` stops it
    (`inflight.Cancelled`) before a chunk or a turn once set.

    A task's episode depends only on the task, its editor (task index modulo the number of editors) and the
    seeds, never on which other tasks run beside it: any partition of the tasks gives the same rows.
    """
    g = params.generate
    source = source or WorldTasks(params)
    names = list(roles.editors)
    tasks = dict(zip(unit, source.tasks(unit), strict=True))
    editors: dict[str, Any] = dict(roles.editors)
    if stager is not None:
        stager.submit(t.source_png for t in tasks.values())
        editors = {name: _StagingEditor(e, stager) for name, e in editors.items()}
    rows: list[dict[str, Any]] = []
    # split across editors; one lockstep chunk spans them all (each editor is called with its own episodes, up to
    # CHUNK), so the expert's and the judge's batches, and their concurrency, cover every editor's episodes
    mine = [(i, tasks[i], names[i % len(names)]) for i in unit]
    for k in range(0, len(mine), CHUNK * len(names)):
        chunk = mine[k : k + CHUNK * len(names)]
        starts = [EpisodeStart(t.task_id, t.source_png, t.instruction, i, t.reference, name) for i, t, name in chunk]
        if cancel is not None:
            check(cancel)
        on_turn = (lambda _turn: check(cancel)) if cancel is not None else None
        try:
            episodes = run_episodes(starts, editors, roles.expert, roles.judge, g.max_turns, on_turn)
        except OpenAICallError as exc:
            raise GenerationFailed(
                f"generate: the chunk of editors {names}, tasks {chunk[0][1].task_id}..{chunk[-1][1].task_id}, "
                f"failed and its unit was not written (a rerun repeats it; answered calls come from the "
                f"request cache): {exc}"
            ) from exc
        for (_, t, name), e in zip(chunk, episodes, strict=True):
            rows.extend(trajectory_rows(t, name, e))
            if images is not None:
                images[sha256_bytes(e.start.source_png)] = e.start.source_png
                images.update((sha256_bytes(turn.image_png), turn.image_png) for turn in e.turns)
    rows.sort(key=_row_key)
    return rows


def _spent(usage: Usage) -> tuple[float, int]:
    """(cost, calls) of `usage`, over its roles."""
    return sum(c.get("cost_usd", 0) for c in usage.values()), int(sum(c.get("calls", 0) for c in usage.values()))


def _budget_reached(params: Params, usage: Usage, done: int, total: int) -> str | None:
    """The message that stops the run when `usage` has reached `generate.budget`, else None."""
    b = params.generate.budget
    cost, calls = _spent(usage)
    if not ((b.max_cost is not None and cost >= b.max_cost) or (b.max_calls is not None and calls >= b.max_calls)):
        return None
    limits = []
    if b.max_cost is not None:
        limits.append(f"cost {cost:.6g} of {b.max_cost:g} ({max(0.0, b.max_cost - cost):.6g} left)")
    if b.max_calls is not None:
        limits.append(f"{calls} of {b.max_calls} calls ({max(0, b.max_calls - calls)} left)")
    return (
        f"budget reached: spent {' and '.join(limits)}, {done} of {total} units done; "
        f"rerun with a larger generate.budget to continue"
    )


def _unit_manifest(manifest: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """A unit's manifest without its image list, and that list packed (64 bytes an image, not a Python string of
    about twice that plus a list slot: a run holds every unit's list until the end)."""
    rest = {k: v for k, v in manifest.items() if k != IMAGES}
    return rest, np.array([sha.encode("ascii") for sha in manifest[IMAGES]], dtype="S64")


@dataclass
class _Finished:
    """Every unit of a run, finished on disk: where, the model ids that made them and their API usage."""

    unit_dirs: list[Path]
    manifests: list[dict[str, Any]]  # without their image lists, which are in `shas`
    models: dict[str, str]
    usage: Usage
    staged: Path  # the images the units' rows refer to, as files named by their hash
    shas: list[np.ndarray]  # each unit's images (hex sha256s, packed)

    def image_shas(self) -> Iterator[str]:
        """Every image the rows refer to, sorted, each once."""
        packed = np.unique(np.concatenate(self.shas)) if self.shas else np.zeros(0, dtype="S64")
        return (bytes(sha).decode("ascii") for sha in packed)

    def images(self) -> Iterator[dict[str, Any]]:
        """The store rows of those images, in hash order (read one at a time from the staged files)."""
        for sha in self.image_shas():
            data = _staged_path(self.staged, sha).read_bytes()
            if sha256_bytes(data) != sha:
                raise IntegrityError(f"{_staged_path(self.staged, sha)}: its bytes are not the image {sha}")
            yield image_record(data)

    @property
    def rows(self) -> int:
        return sum(int(m["rows"]) for m in self.manifests)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """The rows of every unit in dataset order, one unit in memory at a time (a k-way merge when the
        units' key ranges interleave, which the task ids' fixed width keeps from happening below 10**6 tasks)."""
        return _sorted_stream([(tuple(m["keys"][0]), tuple(m["keys"][1]), d) for m, d in
                               zip(self.manifests, self.unit_dirs, strict=True)])  # fmt: skip


def _sorted_stream(parts: list[tuple[tuple[Any, ...], tuple[Any, ...], Path]]) -> Iterator[dict[str, Any]]:
    """The rows of datasets each sorted by `_row_key`, given with their (first key, last key), merged in order."""
    parts = sorted(parts, key=lambda p: p[0])
    if all(a[1] < b[0] for a, b in itertools.pairwise(parts)):
        return itertools.chain.from_iterable(iter_rows(d) for _, _, d in parts)
    return heapq.merge(*(iter_rows(d) for _, _, d in parts), key=_row_key)


def task_source(params: Params, tasks: Path | None) -> TaskSource:
    """The world's tasks, or a prepared folder's; the roles are checked against them (`check_roles`)."""
    source: TaskSource = WorldTasks(params) if tasks is None else PreparedTasks(params, Path(tasks))
    check_roles(params, source)
    return source


class UnitMirror(Protocol):
    """A second home for finished units, for runs whose local disk does not outlive them (a retried pipeline step
    starts on an empty one): `storage_s3.S3UnitMirror`. `name` is `<resume key>/<unit folder>`."""

    def pull(self, name: str, unit_dir: Path, staged: Path) -> bool:
        """Put unit `name` into `unit_dir` and its images into `staged` if it is kept; whether it was."""
        ...

    def push(self, name: str, unit_dir: Path, staged: Path, images: list[str]) -> None:
        """Keep the finished unit in `unit_dir` and its `images` (staged files, by hash)."""
        ...


@dataclass
class _UnitMaker:
    """Generates a unit and writes it to its folder: a job of `inflight.run_in_flight` (units run at once share
    the roles; each stages its own images and counts its own API calls)."""

    params: Params
    roles: _Roles
    source: TaskSource
    work: Path
    mirror: UnitMirror | None

    def __call__(self, unit: range, cancel: threading.Event) -> tuple[range, dict[str, Any], np.ndarray]:
        staged, d = self.work / IMAGES, _unit_dir(self.work, unit)
        images: dict[str, bytes] = {}
        stager = _Stager(staged)
        try:
            with usage_scope() as calls:
                rows = _unit_rows(self.params, self.roles, unit, self.source, images, stager, cancel)
            stager.wait()
        finally:
            stager.close()
        for sha in sorted(images):  # staged before the unit is written: a written unit's images are there
            _stage_image(staged, sha, images[sha])  # (the stager wrote them: a check that each file is there)
        extra = {"generate_unit": [unit.start, unit.stop], "keys": [_row_key(rows[0]), _row_key(rows[-1])],
                 "models": self.roles.models(), "api_usage": calls.usage(like=self.roles.usage()),
                 IMAGES: sorted(images)}  # fmt: skip
        del images
        manifest, shas = _unit_manifest(write_dataset(d, rows, TRAJECTORY_SCHEMA, max(1, len(rows)), extra))
        del rows
        if self.mirror is not None:
            self.mirror.push(f"{self.work.name}/{d.name}", d, staged, [bytes(sha).decode("ascii") for sha in shas])
        return unit, manifest, shas


def _generate_units(params: Params, indices: range, out_dir: Path, restart: bool, source: TaskSource,
                    mirror: UnitMirror | None = None) -> _Finished:  # fmt: skip
    """Generate every unit of `indices` not yet finished beside `out_dir` (or kept by `mirror`; all of them after
    `restart`, which does not forget what `mirror` keeps: those units are the same bytes), `generate.units_in_flight`
    at once. The budget is checked before each unit starts, against everything spent so far (the calls of the
    units running included); the units running then finish, so a run may end up to that many units past it."""
    root = units_root(out_dir)
    if restart and root.exists():
        shutil.rmtree(root)
    work = root / resume_key(params, source)
    staged = work / IMAGES
    if isinstance(source, PreparedTasks):
        source.stage(work)
    units = unit_ranges(indices, params.generate.unit_tasks)
    index = {u.start: k for k, u in enumerate(units)}
    dirs = [_unit_dir(work, u) for u in units]
    manifests: dict[int, dict[str, Any]] = {}
    shas: dict[int, np.ndarray] = {}
    for k, d in enumerate(dirs):
        if not (d / "manifest.json").exists() and mirror is not None:
            mirror.pull(f"{work.name}/{d.name}", d, staged)
        if (d / "manifest.json").exists():
            manifests[k], shas[k] = _unit_manifest(read_manifest(d))
    resumed = sum_usage([m.get("api_usage", {}) for m in manifests.values()])
    roles: _Roles | None = None
    bar = tqdm(total=len(indices), initial=sum(len(units[k]) for k in manifests), desc="generate", unit="traj",
               disable=None)  # fmt: skip
    if manifests:
        tqdm.write(f"generate: resuming, {len(manifests)} of {len(units)} units done in {work}")

    def spent() -> Usage:  # what this run and the finished units it resumed have spent, running units' calls too
        return sum_usage([resumed, roles.usage()]) if roles is not None else resumed

    def show() -> None:
        bar.set_postfix(units=f"{len(manifests)}/{len(units)}", spent=f"{_spent(spent())[0]:.4g}")

    def jobs() -> Iterator[Callable[[threading.Event], tuple[range, dict[str, Any], np.ndarray]]]:
        nonlocal roles
        for k, unit in enumerate(units):
            if k in manifests:
                continue
            if _budget_reached(params, spent(), len(manifests), len(units)) is not None:
                return  # no unit starts: the budget stops the run once the units running are done
            roles = roles or _Roles.build(params)
            yield functools.partial(_UnitMaker(params, roles, source, work, mirror), unit)

    def done(result: tuple[range, dict[str, Any], np.ndarray]) -> None:
        unit, manifest, unit_shas = result
        k = index[unit.start]
        manifests[k], shas[k] = manifest, unit_shas
        bar.update(len(unit))
        show()

    try:
        show()
        run_in_flight(jobs(), params.generate.units_in_flight, done)
    finally:
        bar.close()
        if roles is not None:
            roles.close()
    if len(manifests) < len(units):  # jobs() stopped drawing: the only way a run ends early without an error
        message = _budget_reached(params, spent(), len(manifests), len(units))
        raise BudgetReached(f"{message} (finished units in {work})")
    ordered = [manifests[k] for k in range(len(units))]
    usage = sum_usage([m.get("api_usage", {}) for m in ordered])
    if roles is None and not ordered:  # a shard without tasks
        roles = _Roles.build(params)
        roles.close()
    models = roles.models() if roles is not None else ordered[0]["models"]
    for d, m in zip(dirs, ordered, strict=True):
        if m["models"] != models:
            raise ValueError(f"generate: unit {d} was made by other models ({m['models']} != {models})")
    return _Finished(dirs, ordered, models, usage, staged, [shas[k] for k in range(len(units))])


def _store_writer(images: Callable[[], Iterable[dict[str, Any]]]) -> Callable[[Path], dict[str, Any]]:
    """Writes the image store into the dataset folder being made; its reference goes in the manifest."""

    def write(folder: Path) -> dict[str, Any]:
        return {IMAGES: store_ref(write_image_store(folder / IMAGES, images()), IMAGES)}

    return write


def _inputs(tasks: Path | None) -> dict[str, Path]:
    return {} if tasks is None else {"tasks": Path(tasks) / "tasks", "task_images": Path(tasks) / IMAGES}


def _write(params: Params, out_dir: Path, rows: Iterable[dict[str, Any]], n_rows: int, lineage: dict[str, Any],
           usage: Usage, images: Callable[[], Iterable[dict[str, Any]]],
           trajectories: int) -> dict[str, Any]:  # fmt: skip
    """The dataset of all tasks from `rows` (in dataset order), in `generate.shards` shards, and its image
    store from `images` (in hash order)."""
    g = params.generate
    per_shard = max(1, -(-n_rows // g.shards))
    extra: dict[str, Any] = {"lineage": lineage, "trajectories": trajectories}
    if usage:
        extra["api_usage"] = usage
    return write_dataset(out_dir, rows, TRAJECTORY_SCHEMA, per_shard, extra, _store_writer(images))


def run(params: Params, out_dir: Path, restart: bool = False, tasks: Path | None = None,
        mirror: UnitMirror | None = None) -> dict[str, Any]:  # fmt: skip
    """The trajectories of all tasks (the world's, or the prepared folder `tasks`'s) at `out_dir`, with their
    image store in `out_dir/images`, resuming the finished units of an earlier run of the same params and tasks
    (`restart`: generate every unit again), kept beside `out_dir` or by `mirror`."""
    with writer_lock(out_dir):
        source = task_source(params, tasks)
        done = _generate_units(params, range(source.count), out_dir, restart, source, mirror)
        lineage = make_lineage("generate", params, SECTIONS, _inputs(tasks), done.models)
        manifest = _write(params, out_dir, done.iter_rows(), done.rows, lineage, done.usage, done.images, source.count)
        shutil.rmtree(units_root(out_dir), ignore_errors=True)
        return manifest


def shard_tasks(params: Params, shard: int, count: int | None = None) -> range:
    """The task indices of generation shard `shard` of `generate.shards` over `count` tasks (default
    `generate.num_tasks`): contiguous, sizes differ by <= 1."""
    g = params.generate
    n = g.num_tasks if count is None else count
    if not 0 <= shard < g.shards:
        raise ValueError(f"generate: shard {shard} is outside 0..{g.shards - 1} (generate.shards = {g.shards})")
    return range(shard * n // g.shards, (shard + 1) * n // g.shards)


def run_shard(params: Params, shard: int, out_dir: Path, restart: bool = False,
              tasks: Path | None = None, mirror: UnitMirror | None = None) -> dict[str, Any]:  # fmt: skip
    """One generation shard (for a fan-out): the rows of `shard_tasks(params, shard)`, as one parquet file, with
    the images they refer to in `out_dir/images`.

    Its units live beside `out_dir` until it is written, and with `mirror` (a pipeline step: S3) also there, so a
    retried shard resumes them even on a fresh disk. `gather` over all shards' outputs writes the same dataset,
    byte for byte, as `run`.
    """
    with writer_lock(out_dir):
        source = task_source(params, tasks)
        indices = shard_tasks(params, shard, source.count)
        done = _generate_units(params, indices, out_dir, restart, source, mirror)
        extra: dict[str, Any] = {
            "generate_shard": {
                "shard": shard,
                "of": params.generate.shards,
                "tasks": [indices.start, indices.stop],
                "count": source.count,
            },
            "lineage": make_lineage("generate", params, SECTIONS, _inputs(tasks), done.models),
        }
        if done.manifests:  # the key range of its rows, so `gather` streams the shards one after another
            extra["keys"] = [min(tuple(m["keys"][0]) for m in done.manifests),
                             max(tuple(m["keys"][1]) for m in done.manifests)]  # fmt: skip
        if done.usage:
            extra["api_usage"] = done.usage
        manifest = write_dataset(out_dir, done.iter_rows(), TRAJECTORY_SCHEMA, max(1, done.rows), extra,
                                 _store_writer(done.images))  # fmt: skip
        shutil.rmtree(units_root(out_dir), ignore_errors=True)
        return manifest


def gather(params: Params, shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Join the outputs of `run_shard` for every shard (in any order) into the dataset `run` writes."""
    with writer_lock(out_dir):
        return _gather(params, shard_dirs, out_dir)


def _gather(params: Params, shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    expected = params.section_hash(*SECTIONS)
    seen: dict[int, Path] = {}
    models: dict[str, str] | None = None
    parts: list[tuple[tuple[Any, ...], tuple[Any, ...], Path]] = []
    n_rows = 0
    usages = []
    inputs: list[dict[str, Any]] = []
    counts: set[int] = set()
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
        first, last = manifest.get("keys") or [("", -1), ("\U0010ffff", 0)]  # unknown: merged with the others
        parts.append((tuple(first), tuple(last), Path(d)))
        n_rows += int(manifest["rows"])
        inputs.append({k: lineage.get(k, {}) for k in ("inputs", "input_sizes")})
        counts.add(int(info.get("count", params.generate.num_tasks)))
    missing = sorted(set(range(params.generate.shards)) - set(seen))
    if missing:
        raise ValueError(f"generate: shards {missing} of {params.generate.shards} are missing")
    if len({json.dumps(i, sort_keys=True) for i in inputs}) > 1:
        raise ValueError("generate: the shards were made from different prepared tasks")
    stores = [Path(d) / IMAGES for d in shard_dirs]
    lineage = {**make_lineage("generate", params, SECTIONS, {}, models or {}), **(inputs[0] if inputs else {})}
    return _write(
        params,
        out_dir,
        _sorted_stream(parts),
        n_rows,
        lineage,
        sum_usage(usages),
        lambda: merge_stores(stores),
        counts.pop() if counts else params.generate.num_tasks,
    )
