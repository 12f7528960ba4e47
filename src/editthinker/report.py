"""The run report: one self-contained HTML file a person opens after a run (`editthinker report`).

It reads whatever the run left (stage timings, dataset manifests, the trajectories and step samples, the
validation report, the checkpoints' metrics, the evaluation summary and plot) and shows: stage timings,
the data funnel (generated -> kept by the filter -> SFT / RL step samples), score distributions, a
trajectory browser (every turn's image, instruction, judge scores, the expert's critique and whether the
filter kept the turn), validation, training curves, the evaluation tables and plots, and each artifact's
lineage. A part the run has not produced yet is shown as "not run"; a part that cannot be read says why.

Everything is inline: images are base64 data URIs (larger ones shrunk to thumbnails), charts are inline SVG,
the style sheet and the browser's filter script are in the page. No URL is loaded, so it renders offline.
Same inputs give the same bytes (no timestamps).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from editthinker import __version__
from editthinker.storage import atomic_write_bytes

THUMBNAIL_PX = 256  # images larger than this are shrunk for the page
OPEN_CARDS = 10  # the browser's first trajectories are shown open, the rest folded (one click, or "expand all")
SYSTEM_ORDER = ("editor", "editor+sft", "editor+rl", "editor+expert")  # evaluate's systems, as README lists them
# the colours evaluate's score-by-turn plot gives them (matplotlib's first four, in evaluate's order)
SYSTEM_COLORS = {"editor": "#1f77b4", "editor+expert": "#ff7f0e", "editor+sft": "#2ca02c", "editor+rl": "#d62728"}
DATASET_ORDER = ("trajectories", "sft", "rl")
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d")
BROWSER_COLUMNS_LIGHT = [
    "trajectory_id",
    "turn",
    "editor",
    "source",
    "task_type",
    "semantic",
    "quality",
    "overall",
    "stop_reason",
]


class NotRun(Exception):
    """A part of the run that has no output yet (its stage was not run)."""


@dataclass(frozen=True)
class Sources:
    """Where a run's outputs are (the CLI passes its default layout under a run folder)."""

    run_stats: Path
    trajectories: Path
    filtered: Path
    sft_data: Path
    rl_data: Path
    validation: Path
    sft_model: Path
    rl_model: Path
    evaluation: Path


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _json(path: Path, stage: str) -> Any:
    """The JSON file at `path`; NotRun if it is not there (`stage` says whose output it is, or why it is not)."""
    if not path.exists():
        what = stage if " " in stage else f"{stage} has not run"
        raise NotRun(f"{what}: {path} does not exist")
    return json.loads(path.read_text())


def _manifest(data_dir: Path, stage: str) -> dict[str, Any]:
    manifest: dict[str, Any] = _json(Path(data_dir) / "manifest.json", stage)
    return manifest


def _table(data_dir: Path, columns: list[str]) -> Any:
    """`columns` of every row of the dataset, as one arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from editthinker.records import shard_paths

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in shard_paths(data_dir)])


def _rows_of(data_dir: Path, trajectory_ids: Sequence[str], batch_rows: int = 256) -> list[dict[str, Any]]:
    """Every column of the rows of these trajectories, read a few hundred rows at a time (the shards are
    written without statistics to skip by, and a shard of full-size images can be larger than memory)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from editthinker.records import shard_paths

    wanted = pa.array(list(trajectory_ids), pa.string())
    rows: list[dict[str, Any]] = []
    for path in shard_paths(data_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            keep = pc.is_in(batch.column("trajectory_id"), value_set=wanted)
            rows += batch.filter(keep).to_pylist()
    return rows


def png_uri(data: bytes | None, max_px: int = THUMBNAIL_PX) -> str | None:
    """A data: URI of a PNG (shrunk to `max_px` on its longer side when larger), None if it does not decode."""
    if not data:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_px:
                im.thumbnail((max_px, max_px))
                buf = io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
                data = buf.getvalue()
            else:
                im.verify()
    except Exception:  # noqa: BLE001 (PIL raises many kinds for a bad image; the page says it is unreadable)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """A table of escaped cells; a cell that is a `Raw` is inserted as HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw(str):
    """HTML that goes into the page as is (built here from escaped parts)."""


def _ordered(keys: Iterable[str], first: Sequence[str]) -> list[str]:
    """`keys` with those in `first` first, in that order, then the rest sorted (JSON files sort their keys)."""
    keys = list(keys)
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def _cell(c: Any) -> str:
    return c if isinstance(c, Raw) else esc(_fmt(c))


# ------------------------------------------------------------------------------------------------- charts


def svg_histogram(
    series: Sequence[tuple[str, Sequence[float]]],
    lo: float = 0.0,
    hi: float = 10.0,
    bins: int = 10,
    xlabel: str = "",
    width: int = 560,
    height: int = 240,
) -> str:
    """Grouped bars: how many values of each series fall in each of `bins` equal bins over [lo, hi]."""
    left, right, top, bottom = 44, 10, 30, 40
    pw, ph = width - left - right, height - top - bottom
    counts = []
    for _, values in series:
        c = [0] * bins
        for v in values:
            if v is None or math.isnan(v):
                continue
            k = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
            c[k] += 1
        counts.append(c)
    ymax = max([1, *(max(c) for c in counts)])
    group = pw / bins
    bar = group * 0.84 / max(1, len(series))
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for frac in (0, 0.5, 1):
        y = top + ph - frac * ph
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{round(frac * ymax)}</text>')
    for s, c in enumerate(counts):
        color = PALETTE[s % len(PALETTE)]
        for k, n in enumerate(c):
            if not n:
                continue
            x = left + k * group + group * 0.08 + s * bar
            h = n / ymax * ph
            a, b = lo + k * (hi - lo) / bins, lo + (k + 1) * (hi - lo) / bins
            parts.append(
                f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{esc(series[s][0])}: {n} in [{a:g}, {b:g}{']' if k == bins - 1 else ')'}</title></rect>"
            )
    for k in range(bins + 1):
        x = left + k * group
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">'
                     f"{lo + k * (hi - lo) / bins:g}</text>")  # fmt: skip
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="label" text-anchor="middle">{esc(xlabel)}</text>'
    )
    x = left
    for s, (name, values) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        label = f"{name} (n={sum(1 for v in values if v is not None and not math.isnan(v))})"
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="17" class="legend">{esc(label)}</text>')
        x += 22 + 6.4 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def svg_intervals(rows: Sequence[tuple[str, float, float, float]], width: int = 560) -> str:
    """Horizontal bars 0-100% with a whisker over each row's interval: (label, value, low, high)."""
    left, right, row_h, top = 150, 60, 26, 8
    pw = width - left - right
    height = top + row_h * len(rows) + 24
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for k in range(0, 101, 25):
        x = left + k / 100 * pw
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - 20}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" class="tick" text-anchor="middle">{k}%</text>')
    for i, (label, value, lo, hi) in enumerate(rows):
        y = top + i * row_h
        color = SYSTEM_COLORS.get(label, PALETTE[i % len(PALETTE)])
        parts.append(f'<text x="{left - 8}" y="{y + 17}" class="legend" text-anchor="end">{esc(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 5}" width="{value * pw:.1f}" height="16" fill="{color}" opacity="0.8">'
                     f"<title>{esc(label)}: {_pct(value)} [{_pct(lo)}, {_pct(hi)}]</title></rect>")  # fmt: skip
        x0, x1 = left + lo * pw, left + hi * pw
        parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y + 13}" y2="{y + 13}" class="whisker"/>')
        for xe in (x0, x1):
            parts.append(f'<line x1="{xe:.1f}" x2="{xe:.1f}" y1="{y + 7}" y2="{y + 19}" class="whisker"/>')
        parts.append(f'<text x="{left + pw + 6}" y="{y + 17}" class="tick">{_pct(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_curve(values: Sequence[float], label: str, width: int = 360, height: int = 130) -> str:
    """A line over steps with the first, last, min and max written beside it."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return '<p class="muted">no values logged</p>'
    left, right, top, bottom = 44, 10, 10, 24
    pw, ph = width - left - right, height - top - bottom
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    n = len(vals)
    flat = hi == lo  # a constant series is drawn at the bottom, labelled once
    pts = [
        (left + (i / (n - 1) if n > 1 else 0.5) * pw, top + ph - (0.0 if flat else (v - lo) / span) * ph)
        for i, v in enumerate(vals)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="grid"/>',
        f'<text x="{left - 6}" y="{top + 8}" class="tick" text-anchor="end">{hi:.3g}</text>' if hi > lo else "",
        f'<text x="{left - 6}" y="{top + ph + 4}" class="tick" text-anchor="end">{lo:.3g}</text>',
        f'<polyline points="{path}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>',
        *(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{PALETTE[0]}"/>' for x, y in pts if n <= 40),
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="label" text-anchor="middle">'
        f"{esc(label)} over {n} logged step(s)</text>",
        "</svg>",
    ]
    return "".join(parts)


def _bar(frac: float, text: str) -> Raw:
    width = max(0.0, min(1.0, frac)) * 100
    return Raw(f'<div class="bar"><div class="fill" style="width:{width:.1f}%"></div><span>{esc(text)}</span></div>')


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """The outputs of one run, read on demand."""

    src: Sources
    max_trajectories: int = 50
    seed: int = 0

    @cached_property
    def turns(self) -> Any:
        """Every generated turn without its images (a pandas frame)."""
        _manifest(self.src.trajectories, "generate")
        return _table(self.src.trajectories, BROWSER_COLUMNS_LIGHT).to_pandas()

    @cached_property
    def kept_turns(self) -> set[tuple[str, int]] | None:
        """(trajectory id, turn) of every turn the filter kept; None if the filter has not run."""
        try:
            _manifest(self.src.filtered, "filter")
        except NotRun:
            return None
        t = _table(self.src.filtered, ["trajectory_id", "turn"])
        return set(zip(t.column("trajectory_id").to_pylist(), t.column("turn").to_pylist(), strict=True))

    def steps(self, which: str) -> Any:
        path = self.src.sft_data if which == "sft" else self.src.rl_data
        _manifest(path, "split")
        return _table(path, ["trajectory_id", "task_type", "target_semantic", "target_quality"]).to_pandas()

    @cached_property
    def chosen(self) -> list[str]:
        """The trajectories the browser shows: all if few, else a seeded sample, in id order."""
        ids = sorted(set(self.turns["trajectory_id"]))
        if len(ids) <= self.max_trajectories:
            return ids
        rank = sorted(ids, key=lambda i: hashlib.sha256(f"{self.seed}:{i}".encode()).hexdigest())
        return sorted(rank[: self.max_trajectories])


# ------------------------------------------------------------------------------------------------- sections


def section_overview(run: Run) -> str:
    facts: list[tuple[str, str]] = []
    try:
        stats = _json(run.src.run_stats, "run")
        done = [s for s in stats["stages"] if s.get("exit_code", 0) == 0]
        failed = [s["stage"] for s in stats["stages"] if s.get("exit_code", 0) != 0]
        facts.append(
            ("stages run", ", ".join(s["stage"] for s in done) + (f" (failed: {failed[0]})" if failed else ""))
        )
        facts.append(("wall time", f"{stats.get('total_s', 0):.1f} s"))
    except NotRun:
        pass
    try:
        g = _manifest(run.src.trajectories, "generate")
        facts.append(("trajectories generated", f"{_fmt(g.get('trajectories'))} ({_fmt(g['rows'])} turns)"))
    except NotRun:
        pass
    try:
        f = _manifest(run.src.filtered, "filter")
        total = f.get("kept", 0) + f.get("dropped", 0)
        facts.append(("kept by the filter", f"{_fmt(f.get('kept'))} of {_fmt(total)}"))
    except NotRun:
        pass
    try:
        sft, rl = _manifest(run.src.sft_data, "split"), _manifest(run.src.rl_data, "split")
        facts.append(("step samples", f"{_fmt(sft['rows'])} SFT / {_fmt(rl['rows'])} RL"))
    except NotRun:
        pass
    try:
        v = _json(run.src.validation / "report.json", "validate")
        facts.append(("validation", "PASS" if v.get("success") else "FAIL"))
    except NotRun:
        pass
    try:
        e = _json(run.src.evaluation / "summary.json", "evaluate")
        base = e["systems"].get("editor", {}).get("all", {})
        ch = e.get("challenger", {})
        facts.append(
            ("RL thinker (challenger)", f"success {_pct(ch.get('success_rate'))} vs editor alone "
             f"{_pct(base.get('success_rate'))}; overall {_fmt(ch.get('overall'))} vs {_fmt(base.get('overall'))}")
        )  # fmt: skip
    except NotRun:
        pass
    if not facts:
        raise NotRun("nothing has run yet: no output of any stage was found")
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"


def section_timings(run: Run) -> str:
    from editthinker.stages import STAGES

    stats = _json(run.src.run_stats, "no stage was run by `editthinker run` here")
    rows = stats["stages"]
    longest = max([1e-9, *(r["wall_s"] for r in rows)])
    by_stage = {r["stage"]: r for r in rows}
    table = []
    for stage in STAGES:
        r = by_stage.get(stage)
        if r is None:
            table.append([stage, Raw('<span class="muted">not run in this run</span>'), "", ""])
            continue
        code = r.get("exit_code", 0)
        status = Raw('<span class="ok">ok</span>' if code == 0 else f'<span class="bad">failed (exit {code})</span>')
        table.append([stage, _bar(r["wall_s"] / longest, f"{r['wall_s']:.1f} s"), f"{r['peak_rss_mib']:.0f}", status])
    total = stats.get("total_s", sum(r["wall_s"] for r in rows))
    peak = max([0.0, *(r["peak_rss_mib"] for r in rows)])
    table.append([Raw("<b>total</b>"), f"{total:.1f} s", f"{peak:.0f}", ""])
    note = f"<p>From {esc(run.src.run_stats)}; each stage ran as its own process (peak RSS is that process's).</p>"
    return note + html_table(["stage", "wall time", "peak RSS MiB", "status"], table, "timings")


def section_funnel(run: Run) -> str:
    g = _manifest(run.src.trajectories, "generate")
    generated = int(g.get("trajectories") or len(set(run.turns["trajectory_id"])))
    rows: list[list[Any]] = [
        ["generated", _bar(1.0, f"{generated:,} trajectories"), f"{g['rows']:,} turns", "generate"]
    ]
    try:
        f = _manifest(run.src.filtered, "filter")
        kept = int(f.get("kept", 0))
        share = kept / max(1, generated)
        notes = (
            f"{f['rows']:,} turns; {f.get('dropped', 0):,} trajectories dropped, "
            f"{f.get('truncated_turns', 0):,} turns cut after the best"
        )
        rows.append(["kept by the filter", _bar(share, f"{kept:,} trajectories ({_pct(share)})"), notes, "filter"])
    except NotRun:
        rows.append(["kept by the filter", Raw('<span class="muted">not run</span>'), "", "filter"])
    try:
        sft, rl = _manifest(run.src.sft_data, "split"), _manifest(run.src.rl_data, "split")
        unrolled = int(sft.get("unbalanced_rows", sft["rows"])) + int(rl.get("unbalanced_rows", rl["rows"]))
        u = max(1, unrolled)
        rows.append(["step samples (unrolled)", _bar(1.0, f"{unrolled:,} samples"), "one per critiqued turn", "split"])
        for name, m in (("SFT", sft), ("RL", rl)):
            before = int(m.get("unbalanced_rows", m["rows"]))
            text = f"{m['rows']:,} samples ({_pct(m['rows'] / u)})"
            rows.append([f"{name} samples", _bar(m["rows"] / u, text), f"{before:,} before balancing", "split"])
    except NotRun:
        rows.append(["SFT / RL step samples", Raw('<span class="muted">not run</span>'), "", "split"])
    note = (
        "<p>Trajectory bars are relative to the trajectories generated; sample bars to the step samples unrolled "
        "from the kept trajectories, before balancing by task type and score band.</p>"
    )
    return note + html_table(["", "count", "", "stage"], rows, "funnel")


def section_scores(run: Run) -> str:
    turns = run.turns
    ordered = turns.sort_values(["trajectory_id", "turn"])
    by_traj = ordered.groupby("trajectory_id", sort=True)
    first = by_traj.head(1)["overall"].tolist()
    last = by_traj.tail(1)["overall"].tolist()
    series: list[tuple[str, Sequence[float]]] = [("turn 1", first), ("last turn", last)]
    kept = run.kept_turns
    if kept is not None:
        mask = [(t, int(n)) in kept for t, n in zip(ordered["trajectory_id"], ordered["turn"], strict=True)]
        best = ordered[mask].groupby("trajectory_id", sort=True).tail(1)["overall"].tolist()
        series.append(("kept: best turn", best))
    parts = [
        "<h3>Judge overall score (0-10) of the generated trajectories</h3>",
        svg_histogram(series, xlabel="overall = sqrt(semantic x quality)"),
        "<h3>Semantic and quality scores, every generated turn</h3>",
        svg_histogram(
            [("semantic", turns["semantic"].tolist()), ("quality", turns["quality"].tolist())], xlabel="score"
        ),
    ]
    try:
        sft, rl = run.steps("sft"), run.steps("rl")
        parts += [
            "<h3>Step samples: judge semantic score of the edit the sample critiques</h3>",
            svg_histogram(
                [("SFT", sft["target_semantic"].tolist()), ("RL", rl["target_semantic"].tolist())], xlabel="semantic"
            ),
        ]
        ops = sorted(set(sft["task_type"]) | set(rl["task_type"]))
        cs, cr = Counter(sft["task_type"]), Counter(rl["task_type"])
        parts.append(html_table(["task type", "SFT samples", "RL samples"], [[o, cs[o], cr[o]] for o in ops],
                                "narrow"))  # fmt: skip
    except NotRun:
        parts.append('<p class="muted">Step samples: split not run.</p>')
    return "".join(parts)


def _image_bytes(images: Any, sha: Any) -> bytes | None:
    """An image's bytes from the run's image store (None when there is no store or it lacks the hash)."""
    if images is None or not isinstance(sha, str) or sha not in images:
        return None
    data: bytes = images.bytes_of(sha)
    return data


def _store_of(trajectories: Path) -> Any:
    """The image store of the trajectories (inside the dataset), or None when it cannot be opened."""
    from editthinker.images import open_store_for

    try:
        return open_store_for(trajectories, trajectories / "images")
    except (OSError, ValueError):
        return None


def _turn_card(row: dict[str, Any], status: str, images: Any = None) -> str:
    uri = png_uri(_image_bytes(images, row.get("image")))
    img = f'<img src="{uri}" alt="turn {row["turn"]}">' if uri else '<div class="noimg">unreadable image</div>'
    badge = {"kept": "kept by filter", "cut": "cut (after the best turn)", "dropped": "trajectory dropped"}.get(
        status, "filter not run"
    )
    crit = ""
    if row.get("has_critique"):
        verdict = (
            '<span class="ok">satisfied</span>'
            if row.get("critique_satisfied")
            else f"rewrite: <q>{esc(row.get('next_instruction', ''))}</q>"
        )
        raw = esc(row.get("critique_raw") or "")
        crit = (
            f'<div class="crit"><b>critique:</b> {esc(row.get("critique_reason", ""))}<br>{verdict}'
            f"<details><summary>raw answer</summary><pre>{raw}</pre></details></div>"
        )
    else:
        crit = '<div class="crit muted">no critique (last turn)</div>'
    return (
        f'<figure class="turn {esc(status)}">{img}<figcaption>'
        f'<div><b>turn {row["turn"]}</b> <span class="badge {esc(status)}">{esc(badge)}</span></div>'
        f'<div class="instr">{esc(row.get("instruction", ""))}</div>'
        f'<div class="scores">SC {_fmt(row.get("semantic"), 1)} · PQ {_fmt(row.get("quality"), 1)} · '
        f"<b>O {_fmt(row.get('overall'), 2)}</b></div>{crit}</figcaption></figure>"
    )


def section_trajectories(run: Run) -> str:
    chosen = run.chosen
    total = len(set(run.turns["trajectory_id"]))
    rows = sorted(_rows_of(run.src.trajectories, chosen), key=lambda r: (r["trajectory_id"], r["turn"]))
    kept = run.kept_turns
    kept_ids = {t for t, _ in kept} if kept is not None else set()
    cards: list[str] = []
    editors: set[str] = set()
    ops: set[str] = set()
    images = _store_of(run.src.trajectories)
    for tid in chosen:
        turns = [r for r in rows if r["trajectory_id"] == tid]
        if not turns:
            continue
        head = turns[0]
        editors.add(head["editor"])
        ops.add(head["task_type"])
        outcome = "unknown" if kept is None else "kept" if tid in kept_ids else "dropped"
        statuses = [
            "unknown"
            if kept is None
            else "kept"
            if (tid, r["turn"]) in kept
            else "cut"
            if outcome == "kept"
            else "dropped"
            for r in turns
        ]
        src = png_uri(_image_bytes(images, head.get("source_image")))
        src_img = f'<img src="{src}" alt="source">' if src else '<div class="noimg">unreadable image</div>'
        best = max((r["overall"] for r in turns if r["overall"] is not None), default=None)
        summary = (
            f"<code>{esc(tid)}</code> · {esc(head['editor'])} · {esc(head['source'])} · {esc(head['task_type'])} · "
            f"{len(turns)} turn(s) · best O {_fmt(best)} · stop: {esc(head['stop_reason'])} · "
            f'<span class="badge {esc(outcome)}">{esc({"unknown": "filter not run"}.get(outcome, outcome))}</span>'
        )
        figures = (
            f'<figure class="turn source">{src_img}<figcaption><div><b>source</b></div>'
            f'<div class="instr">{esc(head["original_instruction"])}</div></figcaption></figure>'
            + "".join(_turn_card(r, s, images) for r, s in zip(turns, statuses, strict=True))
        )
        search = " ".join([tid, head["original_instruction"], *(r["instruction"] for r in turns)]).lower()
        is_open = " open" if len(cards) < OPEN_CARDS else ""
        cards.append(
            f'<details class="traj"{is_open} data-editor="{esc(head["editor"])}" data-op="{esc(head["task_type"])}" '
            f'data-outcome="{esc(outcome)}" data-text="{esc(search)}"><summary>{summary}</summary>'
            f'<div class="turns">{figures}</div></details>'
        )
    shown = (
        f"all {len(chosen):,} trajectories"
        if len(chosen) == total
        else f"{len(chosen):,} of {total:,} trajectories (a sample drawn with seed {run.seed}; "
        f"<code>editthinker report --trajectories N</code> shows more)"
    )
    options = "".join(f'<option value="{esc(e)}">{esc(e)}</option>' for e in sorted(editors))
    op_options = "".join(f'<option value="{esc(o)}">{esc(o)}</option>' for o in sorted(ops))
    controls = (
        '<div class="controls">'
        f'<label>editor <select id="f-editor"><option value="">all</option>{options}</select></label>'
        f'<label>task type <select id="f-op"><option value="">all</option>{op_options}</select></label>'
        '<label>filter <select id="f-outcome"><option value="">all</option><option value="kept">kept</option>'
        '<option value="dropped">dropped</option></select></label>'
        '<label>search <input id="f-text" type="search" placeholder="id or instruction"></label>'
        '<button type="button" id="f-collapse">collapse all</button>'
        '<button type="button" id="f-expand">expand all</button>'
        '<span id="f-count"></span></div>'
    )
    note = (
        f"<p>Showing {shown}, the first {OPEN_CARDS} open. Each row: the source image and instruction, then every "
        "turn's edit with the instruction it used, the judge's scores (SC semantic, PQ quality, O overall), the "
        "expert's critique of that edit and whether the filter kept the turn.</p>"
    )
    return note + controls + '<div id="browser">' + "".join(cards) + "</div>"


def section_validation(run: Run) -> str:
    report = _json(run.src.validation / "report.json", "validate")
    verdict = '<span class="ok">PASS</span>' if report.get("success") else '<span class="bad">FAIL</span>'
    rows = []
    failures = []
    datasets = report.get("datasets", {})
    for name in _ordered(datasets, DATASET_ORDER):
        d = datasets[name]
        c = d.get("counts", {})
        ok = Raw('<span class="ok">pass</span>' if d.get("success") else '<span class="bad">fail</span>')
        rows.append([name, ok, d.get("rows"), c.get("expectations"), c.get("failed")])
        for f in d.get("failures", []):
            where = ", ".join("(" + ", ".join(f"{k}={v}" for k, v in r.items()) + ")" for r in f.get("rows", [])[:5])
            failures.append(
                [name, f.get("expectation"), str(f.get("column")), f.get("unexpected_count"), where or f.get("error")]
            )
    out = f"<p>Overall: {verdict} (great-expectations suites; {esc(run.src.validation / 'report.md')})</p>"
    out += html_table(["dataset", "result", "rows", "expectations", "failed"], rows, "narrow")
    if failures:
        out += "<h3>Failed expectations</h3>" + html_table(
            ["dataset", "expectation", "column", "unexpected", "rows (first 5)"], failures
        )
    return out


def section_training(run: Run) -> str:
    blocks = []
    for stage, path, curve, label in (
        ("sft", run.src.sft_model, "loss_curve", "training loss"),
        ("rl", run.src.rl_model, "reward_curve", "mean reward"),
    ):
        try:
            m = _json(path / "metrics.json", stage)
        except NotRun:
            blocks.append(f'<div class="card"><h3>{stage.upper()}</h3><p class="notrun">not run</p></div>')
            continue
        facts = [
            ("model", m.get("model_id")),
            ("samples", _fmt(m.get("samples"))),
            ("optimizer steps", _fmt(m.get("steps"))),
            ("wall time", f"{_fmt(m.get('wall_seconds'), 1)} s ({_fmt(m.get('steps_per_second'), 2)} steps/s)"),
        ]
        facts += [(k, _fmt(v, 4)) for k, v in sorted(m.items()) if k.startswith(("train_loss_", "reward_")) and
                  not isinstance(v, list)]  # fmt: skip
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
        blocks.append(
            f'<div class="card"><h3>{stage.upper()} ({esc(path)})</h3><dl class="facts">{dl}</dl>'
            f"{svg_curve(m.get(curve) or [], label)}</div>"
        )
    if all("not run" in b for b in blocks):
        raise NotRun("sft and rl have not run")
    return '<div class="cards">' + "".join(blocks) + "</div>"


def section_evaluation(run: Run) -> str:
    summary = _json(run.src.evaluation / "summary.json", "evaluate")
    systems: dict[str, dict[str, dict[str, Any]]] = summary["systems"]
    rows = []
    order = _ordered(systems, SYSTEM_ORDER)
    for system in order:
        by_editor = systems[system]
        for editor in _ordered(by_editor, ("all",)):
            m = by_editor[editor]
            lo, hi = m["success_ci95"]
            rows.append(
                [
                    Raw(f"<b>{esc(system)}</b>") if editor == "all" else system,
                    editor,
                    m["n"],
                    f"{100 * m['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                    m["semantic"],
                    m["quality"],
                    m["overall"],
                    m["turns"],
                    m["format_failures"],
                ]
            )
    header = ["system", "editor", "episodes", "success % [95% CI]", "semantic", "quality", "overall", "turns",
              "format failures"]  # fmt: skip
    out = html_table(header, rows, "eval")
    lift = summary.get("lift_over_editor_alone", {})
    if lift:
        out += (
            f"<p>The RL thinker (the challenger) over the editor alone: success "
            f"{100 * lift.get('success_rate', 0):+.1f} points, overall {lift.get('overall', 0):+.2f}.</p>"
        )
    paired = summary.get("paired") or {}
    if paired:
        rows = []
        for name, c in paired.items():
            s, o = c["success_rate"], c["overall"]
            rows.append(
                [
                    name,
                    f"{100 * s['mean']:+.1f} [{100 * s['low']:+.1f}, {100 * s['high']:+.1f}]",
                    f"{o['mean']:+.2f} [{o['low']:+.2f}, {o['high']:+.2f}]",
                    f"{c['mcnemar']['p_value']:.3g}",
                ]
            )
        out += "<h3>Paired on the same items (b - a): 95% bootstrap intervals, McNemar p on success</h3>"
        out += html_table(["b - a", "success points [95% CI]", "overall [95% CI]", "McNemar p"], rows, "narrow")
    bars = [
        (s, systems[s]["all"]["success_rate"], *systems[s]["all"]["success_ci95"]) for s in order if "all" in systems[s]
    ]
    out += "<h3>Success rate with 95% Wilson interval, all editors</h3>" + svg_intervals(bars)
    png = run.src.evaluation / "score_by_turn.png"
    uri = png_uri(png.read_bytes(), max_px=2000) if png.exists() else None
    out += "<h3>Mean overall score by turn</h3>"
    out += f'<img class="plot" src="{uri}" alt="score by turn">' if uri else '<p class="notrun">no plot</p>'
    usage = summary.get("api_usage") or {}
    if usage:
        out += "<h3>API usage</h3>" + html_table(
            ["role", *sorted({k for u in usage.values() for k in u})],
            [[role, *(u.get(k) for k in sorted({k for u in usage.values() for k in u}))] for role, u in usage.items()],
            "narrow",
        )
    return out


def section_lineage(run: Run) -> str:
    rows = []
    sources: list[tuple[str, Path, Callable[[], dict[str, Any]]]] = [
        ("trajectories", run.src.trajectories, lambda: _manifest(run.src.trajectories, "generate")),
        ("filtered", run.src.filtered, lambda: _manifest(run.src.filtered, "filter")),
        ("SFT samples", run.src.sft_data, lambda: _manifest(run.src.sft_data, "split")),
        ("RL samples", run.src.rl_data, lambda: _manifest(run.src.rl_data, "split")),
        ("validation", run.src.validation, lambda: {"lineage": _json(run.src.validation / "lineage.json", "validate")}),
        ("SFT checkpoint", run.src.sft_model, lambda: {"lineage": _json(run.src.sft_model / "lineage.json", "sft")}),
        ("RL checkpoint", run.src.rl_model, lambda: {"lineage": _json(run.src.rl_model / "lineage.json", "rl")}),
        ("evaluation", run.src.evaluation, lambda: _json(run.src.evaluation / "summary.json", "evaluate")),
    ]
    for name, path, read in sources:
        try:
            d = read()
        except NotRun:
            rows.append([name, str(path), Raw('<span class="muted">not run</span>'), "", "", ""])
            continue
        lin = d.get("lineage", {})
        sha = d.get("dataset_sha256")
        rows.append(
            [
                name,
                str(path),
                lin.get("code_version", "–"),
                ", ".join(lin.get("params_sections", [])) + f" ({str(lin.get('params_sha256', ''))[:12]})",
                ", ".join(f"{k} {str(v)[:12]}" for k, v in lin.get("inputs", {}).items()) or "–",
                sha[:12] if isinstance(sha, str) else "–",
            ]
        )
    if all(isinstance(r[2], Raw) for r in rows):
        raise NotRun("no stage output found")
    return html_table(["artifact", "path", "code version", "params sections (hash)", "inputs", "sha256"], rows)


SECTIONS: tuple[tuple[str, str, Callable[[Run], str]], ...] = (
    ("overview", "Overview", section_overview),
    ("timings", "Stage timings", section_timings),
    ("funnel", "Data funnel", section_funnel),
    ("scores", "Score distributions", section_scores),
    ("trajectories", "Trajectory browser", section_trajectories),
    ("validation", "Data validation", section_validation),
    ("training", "Training", section_training),
    ("evaluation", "Evaluation", section_evaluation),
    ("lineage", "Lineage", section_lineage),
)

STYLE = """
:root { --fg: #1d2430; --muted: #6b7280; --line: #d9dee7; --bg: #f6f7f9; --ok: #1a7f37; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: var(--bg); }
header { background: #1f2a44; color: #fff; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c8d0e0; font-size: 13px; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
  padding: 8px 28px; display: flex; flex-wrap: wrap; gap: 14px; }
nav a { color: #2b5bb5; text-decoration: none; font-size: 13px; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 16px 0; padding: 6px 18px 16px; }
h2 { font-size: 18px; margin: 12px 0 8px; }
h3 { font-size: 14px; margin: 16px 0 6px; color: #374151; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f6; font-weight: 600; }
table.funnel td:first-child { white-space: nowrap; }
table.eval td:nth-child(n+3), table.narrow td:nth-child(n+2) { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.notrun { color: var(--muted); border: 1px dashed var(--line); border-radius: 6px; padding: 10px 14px;
  background: repeating-linear-gradient(45deg, #fafafa, #fafafa 8px, #f3f4f6 8px, #f3f4f6 16px); }
.error { color: var(--bad); border: 1px dashed var(--bad); border-radius: 6px; padding: 10px 14px; }
.bar { position: relative; width: 460px; height: 20px; background: #eef1f6; border-radius: 3px; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: #9cb8e0; border-radius: 3px; }
.bar span { position: relative; padding-left: 6px; font-size: 12px; line-height: 20px; white-space: nowrap; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 4px 14px 10px; min-width: 360px; }
svg.chart { display: block; margin: 4px 0 8px; }
svg .grid { stroke: #e3e7ee; stroke-width: 1; }
svg .whisker { stroke: #222; stroke-width: 1.5; }
svg text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #374151; }
svg text.label { font-size: 12px; }
img.plot { max-width: 600px; border: 1px solid var(--line); }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0 12px; font-size: 13px; }
.controls select, .controls input, .controls button { font: inherit; padding: 2px 6px; }
details.traj { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 4px 10px; }
details.traj > summary { cursor: pointer; padding: 4px 0; font-size: 13px; }
.turns { display: flex; gap: 10px; overflow-x: auto; padding: 6px 0; align-items: flex-start; }
figure.turn { margin: 0; width: 186px; flex: 0 0 186px; border: 1px solid var(--line); border-radius: 6px; padding: 6px;
  background: #fff; }
figure.turn.source { background: #f7f9fc; }
figure.turn.cut, figure.turn.dropped { background: #fbf6f6; }
figure.turn img { width: 128px; height: 128px; image-rendering: pixelated; display: block; border: 1px solid #ccc;
  object-fit: contain; background: #fff; }
figcaption { font-size: 12px; margin-top: 4px; }
.instr { margin: 2px 0; }
.scores { color: #374151; font-variant-numeric: tabular-nums; white-space: nowrap; font-size: 11.5px; }
.crit { margin-top: 4px; color: #374151; }
.crit pre { white-space: pre-wrap; font-size: 11px; max-height: 160px; overflow: auto; background: #f6f7f9;
  padding: 4px; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 9px; background: #e5e7eb; }
.badge.kept { background: #d8f0de; color: #14532d; }
.badge.cut, .badge.dropped { background: #fbe0e0; color: #7f1d1d; }
.noimg { width: 128px; height: 128px; display: flex; align-items: center; justify-content: center;
  border: 1px dashed var(--bad); color: var(--bad); font-size: 11px; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
"""

SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll('details.traj'));
  var editor = document.getElementById('f-editor'), op = document.getElementById('f-op'),
      outcome = document.getElementById('f-outcome'), text = document.getElementById('f-text'),
      count = document.getElementById('f-count');
  if (!editor) return;
  function apply() {
    var shown = 0, q = text.value.trim().toLowerCase();
    cards.forEach(function (c) {
      var ok = (!editor.value || c.dataset.editor === editor.value) && (!op.value || c.dataset.op === op.value) &&
               (!outcome.value || c.dataset.outcome === outcome.value) && (!q || c.dataset.text.indexOf(q) >= 0);
      c.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = shown + ' of ' + cards.length + ' shown';
  }
  [editor, op, outcome].forEach(function (el) { el.addEventListener('change', apply); });
  text.addEventListener('input', apply);
  document.getElementById('f-collapse').addEventListener('click', function () {
    cards.forEach(function (c) { c.open = false; });
  });
  document.getElementById('f-expand').addEventListener('click', function () {
    cards.forEach(function (c) { c.open = true; });
  });
  apply();
})();
"""


def render(run: Run, folder: str = "", title: str = "EditThinker run report") -> tuple[str, dict[str, str]]:
    """The page and each section's state ("ok", "not run" or "error")."""
    states: dict[str, str] = {}
    body = []
    for anchor, heading, build in SECTIONS:
        try:
            content = build(run)
            states[anchor] = "ok"
        except NotRun as exc:
            content = f'<p class="notrun">not run: {esc(exc)}</p>'
            states[anchor] = "not run"
        except Exception as exc:  # noqa: BLE001 (a part that cannot be read must not lose the rest of the page)
            content = f'<p class="error">could not read this part of the run: {esc(type(exc).__name__)}: {esc(exc)}</p>'
            states[anchor] = "error"
        body.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>{content}</section>')
    nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in SECTIONS)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(f'run folder: {folder} · ' if folder else '')}editthinker "
        f"{esc(__version__)} · one self-contained file: nothing is loaded from the network</p></header>"
        f"<nav>{nav}</nav><main>{''.join(body)}</main>"
        "<footer>Written by <code>editthinker report</code> (also at the end of <code>editthinker run</code>).</footer>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
    return page, states


def write_report(out: Path, src: Sources, max_trajectories: int = 50, seed: int = 0, folder: str = "") -> str:
    """Write the report to `out` (atomically); return a one-line summary of what it holds. `folder` names the
    run folder in the page's header."""
    run = Run(src, max_trajectories, seed)
    page, states = render(run, folder)
    data = page.encode("utf-8")
    atomic_write_bytes(Path(out), data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # a page to share, not a secret (the atomic writer creates files 0600)
    not_run = [a for a, s in states.items() if s == "not run"]
    errors = [a for a, s in states.items() if s == "error"]
    parts = [f"{len(states) - len(not_run) - len(errors)} of {len(states)} sections"]
    if not_run:
        parts.append(f"not run: {', '.join(not_run)}")
    if errors:
        parts.append(f"unreadable: {', '.join(errors)}")
    if states.get("trajectories") == "ok":
        parts.append(f"{len(run.chosen)} trajectories in the browser")
    parts.append(f"{len(data) / 1024:.0f} KiB")
    return "; ".join(parts)
