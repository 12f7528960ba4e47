"""`editthinker benchmark score`: the project's own scorer of a run, following its benchmark's protocol.

Reads the run's `run.json` (benchmark, data, the items it ran), finds each item's output where the official
scorer would, asks the judge (judging.py: concurrent, cached, costed, retried) and aggregates as the
benchmark's scripts do. Nothing is silently dropped: an item without an output is a *missing output*, an item
with a failed or unparsable judge call a *missing score* (with the reason), both counted in `scores.json` and
shown in every report; metrics are over the scored items, and `complete` says whether that is all of them.
Writes `scores.json` (metrics, 95% bootstrap intervals, breakdown, counts, per-item scores, judge usage) and
`judgements.jsonl` (every call's answers and parsed scores) into the run folder.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from editthinker.backends.openai_api import OpenAIChatClient
from editthinker.benchmarks import get_benchmark
from editthinker.benchmarks.base import JUDGEMENTS_FILE, RUN_FILE, SCORES_FILE, BenchItem, JudgeCall, ScoredItem
from editthinker.benchmarks.judging import Outcome, judge_api_config, judge_calls, open_judge
from editthinker.benchmarks.stats import bootstrap_intervals
from editthinker.config import Params
from editthinker.lineage import code_version
from editthinker.storage import atomic_write_bytes, write_json

log = logging.getLogger(__name__)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a benchmark run (benchmark run writes it)")
    run: dict[str, Any] = json.loads(path.read_text())
    return run


def _items(run: dict[str, Any], items: list[BenchItem], run_dir: Path) -> list[BenchItem]:
    by_id = {it.item_id: it for it in items}
    wanted = run.get("item_ids") or list(by_id)
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise ValueError(f"{run_dir}: {len(unknown)} items of the run are not in the data, e.g. {unknown[:3]}")
    return [by_id[i] for i in wanted]


def score_run(
    params: Params,
    run_dir: Path,
    data: str | None = None,
    client: OpenAIChatClient | None = None,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Score one run folder; write and return its scores. `client` replaces the judge built from params."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    bench = get_benchmark(run["benchmark"])
    cfg = params.benchmarks
    model = getattr(cfg, bench.name).judge_model
    items = _items(run, bench.load(data or run["identity"]["data"], cfg).items, run_dir)
    own = client is None
    client = client or open_judge(cfg.judge, model)
    chunk = chunk or max(32, 4 * client.cfg.concurrency)
    scored: list[ScoredItem] = []
    missing_outputs: list[str] = []
    missing_scores: dict[str, str] = {}
    lines: list[str] = []

    def prepare(part: list[BenchItem]) -> list[tuple[str, JudgeCall]]:
        calls: list[tuple[str, JudgeCall]] = []
        for it in part:
            out = bench.find_output(run_dir, it)
            if out is None:
                missing_outputs.append(it.item_id)
                continue
            calls += [(it.item_id, c) for c in bench.judge_calls(it, out.read_bytes(), it.load_source())]
        return calls

    def collect(part: list[BenchItem], results: list[Outcome]) -> None:
        outcomes: dict[str, list[Outcome]] = {}
        for o in results:
            outcomes.setdefault(o.item_id, []).append(o)
        for it in part:
            if it.item_id not in outcomes:
                continue
            got = outcomes[it.item_id]
            failed = [o for o in got if o.scores is None]
            rec: dict[str, Any] = {"item_id": it.item_id, "calls": [o.as_dict() for o in got]}
            if failed:
                missing_scores[it.item_id] = "; ".join(f"{o.name}: {o.error}" for o in failed)
            else:
                s = bench.item_scores(it, {o.name: o.scores for o in got if o.scores is not None})
                scored.append(s)
                rec["values"] = s.values
            lines.append(json.dumps(rec, sort_keys=True) + "\n")

    # the next chunk's images are read and encoded while the judge answers the current one
    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: tuple[list[BenchItem], Future[list[Outcome]]] | None = None
            for part in tqdm(parts, desc=f"score {run_dir.name}", unit="chunk", disable=None):
                calls = prepare(part)
                if pending is not None:
                    collect(pending[0], pending[1].result())
                pending = (part, pool.submit(judge_calls, client, calls, cfg.judge.format_retries))
            if pending is not None:
                collect(pending[0], pending[1].result())
    finally:
        usage = client.usage.as_dict()
        if own:
            client.close()
    metrics = bench.metrics(scored) if scored else {}
    counts = {"items": len(items), "scored": len(scored), "missing_outputs": len(missing_outputs),
              "missing_scores": len(missing_scores), "excluded": run.get("items", {}).get("excluded", 0)}  # fmt: skip
    api = judge_api_config(cfg.judge, model)
    result: dict[str, Any] = {
        "benchmark": bench.name,
        "title": bench.title,
        "headline": bench.headline,
        "scale": bench.scale,
        "run": run_dir.name,
        "editor": run["editor"],
        "system": run["system"],
        "max_turns": run["max_turns"],
        "judge": {"model": api.model, "base_url": api.base_url, "temperature": api.temperature},
        "metrics": metrics,
        "intervals": bootstrap_intervals(scored, bench.metrics, cfg.bootstrap_resamples, cfg.bootstrap_seed),
        "breakdown": bench.breakdown(scored) if scored else {},
        "counts": counts,
        "complete": counts["scored"] == counts["items"],
        "missing_outputs": missing_outputs,
        "missing_scores": missing_scores,
        "judge_usage": usage,
        "per_item": {s.item_id: {"category": s.category, "values": s.values, "tags": s.tags} for s in scored},
        "code_version": code_version(),
    }
    atomic_write_bytes(run_dir / JUDGEMENTS_FILE, "".join(lines).encode())
    write_json(run_dir / SCORES_FILE, result)
    if missing_outputs or missing_scores:
        log.warning("%s: %d missing outputs, %d missing scores", run_dir, len(missing_outputs), len(missing_scores))
    return result
