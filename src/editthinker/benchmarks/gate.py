"""The promotion gate on a public benchmark: one metric of the thinker, read back from a comparison report.

Pure functions over `report.json` (written by `editthinker benchmark report` or the pipeline's benchmark
step); promote calls `benchmark_metric` for the challenger, stores `metric.value` under `metric.key` with the
registered version, and asks `gate_decision` against the champion's stored value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_JSON = "report.json"


@dataclass(frozen=True)
class BenchmarkMetric:
    benchmark: str
    metric: str
    editor: str
    system: str
    max_turns: int
    value: float
    ci95: tuple[float, float] | None
    complete: bool
    scored: int
    items: int

    @property
    def key(self) -> str:
        """The name promote stores it under in a registered version's metrics."""
        return f"benchmark.{self.benchmark}.{self.metric}"


def benchmark_metric(
    report: Path | dict[str, Any], benchmark: str, metric: str = "", editor: str = "", system: str = "thinker"
) -> BenchmarkMetric:
    """One metric of one system from a report (report.json or its folder): `system` is a label (`editor`,
    `expert`, `thinker-rl`) or a kind (`thinker`: the only thinker); `editor` "" means the only editor;
    `metric` "" the benchmark's headline. Raises ValueError naming what is missing or ambiguous."""
    if not isinstance(report, dict):
        path = Path(report)
        report = json.loads((path / REPORT_JSON if path.is_dir() else path).read_text())
    assert isinstance(report, dict)
    rows = [r for r in report["rows"] if benchmark in r["results"]]
    if editor:
        rows = [r for r in rows if r["editor"] == editor]
    rows = [r for r in rows if system in (r["system"], r["kind"])]
    if len(rows) != 1:
        found = [(r["editor"], r["system"]) for r in report["rows"] if benchmark in r["results"]]
        what = "no" if not rows else "more than one"
        raise ValueError(
            f"benchmark gate: {what} run of system {system!r} (editor {editor or 'any'!r}) on {benchmark}; "
            f"the report has {found}"
        )
    res = rows[0]["results"][benchmark]
    name = metric or res["headline"]
    if name not in res["metrics"] or not math.isfinite(res["metrics"][name]):
        raise ValueError(f"benchmark gate: {benchmark} has no finite metric {name!r} (has {sorted(res['metrics'])})")
    ci = res["intervals"].get(name)
    return BenchmarkMetric(
        benchmark, name, rows[0]["editor"], rows[0]["system"], res["max_turns"], float(res["metrics"][name]),
        (float(ci[0]), float(ci[1])) if ci else None, bool(res["complete"]), res["counts"]["scored"],
        res["counts"]["items"],
    )  # fmt: skip


def gate_decision(
    challenger: BenchmarkMetric, champion: float | None, margin: float, require_complete: bool = True
) -> tuple[bool, str]:
    """Does the challenger's benchmark metric clear the gate? (passes, reason). A challenger whose run has
    missing outputs or scores does not pass when `require_complete`."""
    what = f"{challenger.benchmark} {challenger.metric} {challenger.value:.4f}"
    if require_complete and not challenger.complete:
        return False, f"{what} is over {challenger.scored} of {challenger.items} items only (missing scores)"
    if champion is None:
        return True, f"{what}; the champion has no {challenger.key} to compare"
    if challenger.value - champion > margin:
        return True, f"{what} beats the champion's {champion:.4f} by more than {margin}"
    return False, f"{what} does not beat the champion's {champion:.4f} by more than {margin}"
