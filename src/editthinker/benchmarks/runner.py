"""`editthinker benchmark run`: the Think-while-Edit loop over a benchmark's items, resumable and cached.

One run = one benchmark, one editor, one system (the editor alone, a trained thinker, or the expert as
thinker) and one max-turns setting. It writes into `<out>/<run name>/`:
- every item's final edit in the layout the benchmark's official scorer reads (the run folder is the
  "model" folder those scripts expect), so the official scripts can score the same images;
- `traces.jsonl`: per item, every turn's instruction, image sha256 and critique, the stop reason;
- `run.json`: the run's settings, item counts (edited, failed, excluded), cache hits, API usage, timing.
Edits and critiques are cached under `<out>/.cache/` (cache.py), so a rerun after a crash only does what is
missing, and runs of the same editor share their common turns. An editor or thinker error fails only the
items of its batch: they are listed in run.json (`failed`) and retried by the next run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from editthinker.backends.factory import build_editor, build_expert, load_vlm_thinker
from editthinker.benchmarks import get_benchmark
from editthinker.benchmarks.base import RUN_FILE, TRACES_FILE, BenchItem, Benchmark
from editthinker.benchmarks.cache import CachingEditor, CachingThinker, checkpoint_fingerprint, fingerprint, sha256
from editthinker.config import Params
from editthinker.lineage import code_version
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.roles import Editor
from editthinker.storage import atomic_write_bytes, write_json
from editthinker.usage import api_usage

log = logging.getLogger(__name__)
CACHE_DIR = ".cache"
SYSTEM_KINDS = ("editor", "thinker", "expert")


@dataclass(frozen=True)
class System:
    """editor (alone, one turn), thinker (a checkpoint folder or model id) or expert (params.expert as thinker)."""

    kind: str
    thinker: str = ""

    @property
    def label(self) -> str:
        if self.kind != "thinker":
            return self.kind
        return "thinker-" + _slug(Path(self.thinker).name if Path(self.thinker).is_dir() else self.thinker)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "thinker": self.thinker, "label": self.label}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


def parse_system(spec: str) -> System:
    if spec in ("editor", "expert"):
        return System(spec)
    if spec.startswith("thinker:") and spec[len("thinker:") :]:
        return System("thinker", spec[len("thinker:") :])
    raise ValueError(
        f"system {spec!r}: expected 'editor', 'expert' or 'thinker:<checkpoint folder, model id, or model>'"
    )


def run_name(editor: str, system: System, max_turns: int) -> str:
    return f"{_slug(editor)}-{system.label}-t{1 if system.kind == 'editor' else max_turns}"


def _editor_fingerprint(cfg: Any) -> str:
    described = cfg.model_dump(mode="json", exclude={"device", "cpu_offload", "batch_size", "timeout_s", "retries",
                                                     "backoff_s"})  # fmt: skip
    return fingerprint({"editor": described})


def _thinker(params: Params, system: System, seed: int, cache_dir: Path) -> CachingThinker | None:
    if system.kind == "editor":
        return None
    if system.kind == "expert":
        if params.expert.kind == "synthetic":
            raise ValueError(
                "expert: the synthetic expert needs the world's target scenes; a benchmark needs an API expert "
                "(expert.kind: openai)"
            )
        e = params.expert
        fp = fingerprint({"expert": e.model_dump(include={"kind", "base_url", "model", "temperature", "max_tokens"})})
        return CachingThinker(lambda: build_expert(e, seed), fp, cache_dir, "expert")
    t, inf = params.thinker, params.inference
    spec = system.thinker
    if spec == "model":  # the released thinker named in params, as `editthinker edit --thinker model`
        if inf.thinker_model is None:
            raise ValueError("thinker:model needs params inference.thinker_model (e.g. Qwen/Qwen3-VL-8B-Instruct)")
        spec = inf.thinker_model
    described = {"checkpoint": checkpoint_fingerprint(spec), "dtype": inf.dtype, "max_new_tokens": t.max_new_tokens,
                 "stop": [t.stop_semantic, t.stop_quality], "prompt": inf.prompt, "parse": inf.parse,
                 "template": inf.prompt_template}  # fmt: skip
    return CachingThinker(lambda: load_vlm_thinker(spec, t, inf), fingerprint(described), cache_dir, "thinker")


def _critique(ep: Episode, turn: int) -> dict[str, Any] | None:
    v = ep.turns[turn].critique
    if v is None:
        return None
    return {"format_ok": v.format_ok, "satisfied": v.satisfied, "semantic": v.semantic, "quality": v.quality,
            "reason": v.reason, "answer": v.answer, "error": v.error}  # fmt: skip


def trace_of(item: BenchItem, ep: Episode, output: Path, run_dir: Path) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "category": item.category,
        "instruction": item.instruction,
        "output": str(output.relative_to(run_dir)),
        "stop_reason": ep.stop_reason,
        "format_failures": ep.format_failures,
        "turns": [
            {
                "turn": t.turn,
                "instruction": t.instruction,
                "image_sha256": sha256(t.image_png),
                "critique": _critique(ep, i),
            }  # fmt: skip
            for i, t in enumerate(ep.turns)
        ],
    }


def run_items(
    bench: Benchmark,
    items: list[BenchItem],
    editor: CachingEditor,
    thinker: CachingThinker | None,
    max_turns: int,
    run_dir: Path,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The loop over `items` in lockstep batches; writes each final edit where the official scorer reads it.
    Returns the traces of the items done and {item id: error} for the items whose batch failed."""
    traces: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc=f"{bench.name} {run_dir.name}", unit="batch", disable=None):
        sources = [it.load_source() for it in batch]
        starts = [EpisodeStart(it.item_id, src, it.instruction, seed) for it, src in zip(batch, sources, strict=True)]
        try:
            episodes = run_episodes(starts, editor, thinker, None, max_turns)
        except Exception as exc:  # noqa: BLE001 - a failed batch is reported and retried by the next run
            log.error("%s: batch of %d items failed: %s: %s", run_dir.name, len(batch), type(exc).__name__, exc)
            failed.update({it.item_id: f"{type(exc).__name__}: {exc}" for it in batch})
            continue
        for it, src, ep in zip(batch, sources, episodes, strict=True):
            bench.write_output(run_dir, it, ep.final.image_png, src)
            traces.append(trace_of(it, ep, bench.output_path(run_dir, it), run_dir))
    return traces, failed


def _identity(
    bench: str, data: str, editor: str, editor_fp: str, system: System, max_turns: int, seed: int
) -> dict[str, Any]:
    return {"benchmark": bench, "data": data, "editor": editor, "editor_fingerprint": editor_fp,
            "system": system.as_dict(), "max_turns": max_turns, "seed": seed}  # fmt: skip


def _check_same_run(run_dir: Path, identity: dict[str, Any]) -> None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(f"{run_dir} exists and is not a benchmark run folder; not writing into it")
        return
    before = json.loads(path.read_text()).get("identity", {})
    diff = sorted(k for k in identity if before.get(k) != identity[k])
    if diff:
        raise ValueError(f"{run_dir} holds another run (different {diff}); choose another --out or --name to keep both")


def data_location(data: str) -> str:
    """A local path made absolute (the scorer finds it again from run.json); a hub id as it is."""
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else data


def run(
    params: Params,
    benchmark: str,
    data: str,
    editor_name: str,
    system_spec: str,
    max_turns: int,
    out_root: Path,
    *,
    limit: int | None = None,
    name: str | None = None,
    editors: Mapping[str, Editor] | None = None,
) -> dict[str, Any]:
    """Run one system on one benchmark; write the run's summary as run.json and return it with `run_dir`.

    `editors` replaces params' editors by ready objects (tests use stand-ins that work on any image).
    """
    bench = get_benchmark(benchmark)
    cfg = params.benchmarks
    system = parse_system(system_spec)
    turns = 1 if system.kind == "editor" else max_turns
    if turns < 1:
        raise ValueError("max_turns must be at least 1")
    cfgs = {e.name: e for e in params.editors}
    if editors is not None and editor_name in editors:
        ready = editors[editor_name]
        editor_fp = fingerprint({"editor_object": f"{editor_name}:{ready.model_id}"})

        def build() -> Editor:
            return ready
    elif editor_name in cfgs:
        ecfg = cfgs[editor_name]
        editor_fp = _editor_fingerprint(ecfg)

        def build() -> Editor:
            return build_editor(ecfg, params.world.image_size)
    else:
        raise ValueError(f"editor {editor_name!r} is not in params.editors {sorted(cfgs)}")
    data = data_location(data or getattr(cfg, benchmark).data)
    if not data:
        raise ValueError(f"{benchmark}: no data given (--data or params benchmarks.{benchmark}.data)")
    out_root = Path(out_root)
    run_dir = out_root / (name or run_name(editor_name, system, turns))
    identity = _identity(benchmark, data, editor_name, editor_fp, system, turns, cfg.seed)
    _check_same_run(run_dir, identity)
    loaded = bench.load(data, cfg)
    items = loaded.items[:limit] if limit is not None else loaded.items
    cache_dir = out_root / CACHE_DIR
    editor = CachingEditor(build, editor_fp, cache_dir, editor_name)
    thinker = _thinker(params, system, cfg.seed, cache_dir)
    # written first, so a killed run's folder is still recognised as this run's when it is resumed
    write_json(run_dir / RUN_FILE, {"identity": identity, "status": "running", "item_ids": [i.item_id for i in items]})
    t0 = time.perf_counter()
    traces, failed = run_items(bench, items, editor, thinker, turns, run_dir, cfg.batch_size, cfg.seed)
    wall = time.perf_counter() - t0
    atomic_write_bytes(run_dir / TRACES_FILE, "".join(json.dumps(t, sort_keys=True) + "\n" for t in traces).encode())
    inner = thinker.inner if thinker is not None else None
    summary: dict[str, Any] = {
        "identity": identity,
        "status": "done",
        "benchmark": benchmark,
        "title": bench.title,
        "editor": editor_name,
        "system": system.as_dict(),
        "max_turns": turns,
        "item_ids": [it.item_id for it in items],
        "items": {"total": len(items), "edited": len(traces), "failed": len(failed), "excluded": len(loaded.excluded)},
        "failed": failed,
        "excluded": loaded.excluded,
        "edits": editor.counter.as_dict(),
        "critiques": thinker.counter.as_dict() if thinker is not None else {"computed": 0, "cached": 0},
        "stop_reasons": dict(Counter(t["stop_reason"] for t in traces)),
        "mean_turns": sum(len(t["turns"]) for t in traces) / len(traces) if traces else 0.0,
        "format_failures": sum(t["format_failures"] for t in traces),
        "api_usage": api_usage(expert=inner) if inner is not None else {},
        "wall_s": round(wall, 3),
        "items_per_s": round(len(traces) / wall, 3) if wall > 0 else 0.0,
        "code_version": code_version(),
    }
    write_json(run_dir / RUN_FILE, summary)
    for role in (thinker.inner if thinker is not None else None, editor.inner):
        close = getattr(role, "close", None)
        if callable(close):
            close()
    return {**summary, "run_dir": str(run_dir)}
