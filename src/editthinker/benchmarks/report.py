"""`editthinker benchmark report`: editor alone -> + thinker -> + expert on every benchmark, in one report.

Collects the `scores.json` of scored runs under one or more folders and writes `report.json`,
`report.md` and `comparison.png` (and `turn_ablation.png` when one editor and thinker were run with several
max-turns settings): per editor, each system's headline metric with its 95% bootstrap interval on every
benchmark, the per-category breakdown, the turn ablation, the judges, and how many items are missing.
gate.py reads one metric back from a report, for the promotion gate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from editthinker.benchmarks import BENCHMARKS
from editthinker.benchmarks.base import SCORES_FILE
from editthinker.benchmarks.gate import REPORT_JSON
from editthinker.storage import atomic_dir, write_json

REPORT_MD = "report.md"
KIND_ORDER = {"editor": 0, "thinker": 1, "expert": 2}
LABELS = {"gedit": "GEdit-EN", "imgedit": "ImgEdit", "risebench": "RISEBench", "kris": "KRIS-Bench"}


def collect(roots: list[Path]) -> list[dict[str, Any]]:
    """Every run's scores under `roots` (a run folder, or a folder of run folders, any depth)."""
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob(SCORES_FILE)):
            s = json.loads(path.read_text())
            s["path"] = str(path.parent)
            found.append(s)
    if not found:
        raise FileNotFoundError(f"no {SCORES_FILE} under {[str(r) for r in roots]}: score the runs first")
    return found


def _row_key(s: dict[str, Any]) -> tuple[str, str]:
    return s["editor"], s["system"]["label"]


def _pick(runs: list[dict[str, Any]], max_turns: int) -> dict[str, Any]:
    """Of one system's runs on one benchmark, the one at `max_turns` (else the most turns)."""
    at = [r for r in runs if r["max_turns"] == max_turns]
    return at[0] if at else max(runs, key=lambda r: r["max_turns"])


def _result(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": s["path"],
        "max_turns": s["max_turns"],
        "headline": s["headline"],
        "value": s["metrics"].get(s["headline"]),
        "ci95": s["intervals"].get(s["headline"]),
        "metrics": s["metrics"],
        "intervals": s["intervals"],
        "counts": s["counts"],
        "complete": s["complete"],
        "judge": s["judge"]["model"],
        "judge_cost_usd": s.get("judge_usage", {}).get("cost_usd", 0.0),
    }


def build_report(scores: list[dict[str, Any]], max_turns: int = 5) -> dict[str, Any]:
    benches = [b for b in BENCHMARKS if any(s["benchmark"] == b for s in scores)]
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for s in scores:
        groups.setdefault(_row_key(s), {}).setdefault(s["benchmark"], []).append(s)
    kinds = {_row_key(s): s["system"]["kind"] for s in scores}
    keys = sorted(groups, key=lambda k: (k[0], KIND_ORDER.get(kinds[k], 9), k[1]))
    rows = []
    for editor, label in keys:
        per = groups[(editor, label)]
        rows.append({
            "editor": editor,
            "system": label,
            "kind": kinds[(editor, label)],
            "results": {b: _result(_pick(per[b], max_turns)) for b in benches if b in per},
        })  # fmt: skip
    categories: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for b, res in row["results"].items():
            s = next(x for x in scores if x["path"] == res["run"])
            first: dict[str, Any] = next(iter(s["breakdown"].values()), {})
            categories.setdefault(b, {})[f"{row['editor']} / {row['system']}"] = first
    ablation: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (editor, label), per in groups.items():
        for b, runs in per.items():
            if len({r["max_turns"] for r in runs}) > 1:
                curve = {str(r["max_turns"]): r["metrics"].get(r["headline"]) for r in runs}
                ablation.setdefault(f"{editor} / {label}", {})[b] = dict(
                    sorted(curve.items(), key=lambda kv: int(kv[0]))
                )
    return {
        "benchmarks": benches,
        "headlines": {b: {"metric": BENCHMARKS[b].headline, "scale": BENCHMARKS[b].scale} for b in benches},
        "max_turns": max_turns,
        "rows": rows,
        "categories": categories,
        "ablation": ablation,
    }


def _fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _cell(res: dict[str, Any] | None, with_ci: bool) -> str:
    if res is None:
        return "-"
    text = _fmt(res["value"], res["ci95"] if with_ci else None)
    c = res["counts"]
    if not res["complete"]:
        text += f" ({c['scored']}/{c['items']} scored)"
    return text


def _title(report: dict[str, Any], b: str) -> str:
    h = report["headlines"][b]
    return f"{LABELS.get(b, b)} {h['metric']} ({h['scale']})"


def to_markdown(report: dict[str, Any]) -> str:
    benches = report["benchmarks"]
    head = [
        f"{LABELS.get(b, b)} {report['headlines'][b]['metric']} ({report['headlines'][b]['scale']})" for b in benches
    ]
    lines = ["## Public benchmarks: editor -> + thinker -> + expert", ""]
    lines += ["| editor | " + " | ".join(head) + " |", "|---|" + "---|" * len(benches)]
    for editor in sorted({r["editor"] for r in report["rows"]}):
        mine = [r for r in report["rows"] if r["editor"] == editor]
        cells = [" -> ".join(_fmt((r["results"].get(b) or {}).get("value")) for r in mine) for b in benches]
        lines.append(f"| {editor} ({' -> '.join(r['system'] for r in mine)}) | " + " | ".join(cells) + " |")
    lines += ["", "With 95% bootstrap intervals over items (and the share scored when some are missing):", ""]
    lines += ["| editor | system | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(benches)]
    for r in report["rows"]:
        cells = [_cell(r["results"].get(b), True) for b in benches]
        lines.append(f"| {r['editor']} | {r['system']} | " + " | ".join(cells) + " |")
    judges = sorted({(b, res["judge"]) for r in report["rows"] for b, res in r["results"].items()})
    lines += ["", "Judges: " + ", ".join(f"{LABELS.get(b, b)}: {m}" for b, m in judges)]
    missing = [(r["editor"], r["system"], b, res["counts"]) for r in report["rows"] for b, res in r["results"].items()
               if not res["complete"]]  # fmt: skip
    for editor, system, b, c in missing:
        lines.append(f"- {editor} / {system} on {LABELS.get(b, b)}: {c['missing_outputs']} missing outputs, "
                     f"{c['missing_scores']} missing scores of {c['items']} items")  # fmt: skip
    for b, table in report["categories"].items():
        systems = list(table)
        cats = sorted({c for t in table.values() for c in t})
        metric = report["headlines"][b]["metric"]
        key = "score" if b in ("imgedit", "kris") else ("accuracy" if b == "risebench" else metric)
        lines += ["", f"### {LABELS.get(b, b)} by category ({key})", ""]
        lines += ["| category | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
        for c in cats:
            lines.append(f"| {c} | " + " | ".join(_fmt(table[s].get(c, {}).get(key)) for s in systems) + " |")
    if report["ablation"]:
        turns = sorted({int(t) for a in report["ablation"].values() for curve in a.values() for t in curve})
        lines += ["", "### Turn ablation (headline metric by max turns)", ""]
        lines += [
            "| system | benchmark | " + " | ".join(str(t) for t in turns) + " |",
            "|---|---|" + "---|" * len(turns),
        ]
        for system, per in report["ablation"].items():
            for b, curve in per.items():
                lines.append(
                    f"| {system} | {LABELS.get(b, b)} | " + " | ".join(_fmt(curve.get(str(t))) for t in turns) + " |"
                )
    return "\n".join(lines) + "\n"


def _result_of(report: dict[str, Any], editor: str, system: str, b: str) -> dict[str, Any] | None:
    for r in report["rows"]:
        if (r["editor"], r["system"]) == (editor, system):
            res: dict[str, Any] | None = r["results"].get(b)
            return res
    return None


def _plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = report["benchmarks"]
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.8), dpi=100, squeeze=False)
    editors = sorted({r["editor"] for r in report["rows"]})
    for ax, b in zip(axes[0], benches, strict=True):
        systems = sorted({r["system"] for r in report["rows"]}, key=lambda s: (s != "editor", s == "expert", s))
        width = 0.8 / max(1, len(systems))
        for j, system in enumerate(systems):
            xs: list[float] = []
            ys: list[float] = []
            errs: list[list[float]] = [[], []]
            for i, editor in enumerate(editors):
                res = next(
                    (r["results"].get(b) for r in report["rows"] if (r["editor"], r["system"]) == (editor, system)),
                    None,
                )
                if res is None or res["value"] is None:
                    continue
                xs.append(i + j * width)
                ys.append(res["value"])
                lo, hi = res["ci95"] or (res["value"], res["value"])
                errs[0].append(max(0.0, res["value"] - lo))
                errs[1].append(max(0.0, hi - res["value"]))
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=system)
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(editors))], editors)
        ax.set_title(_title(report, b))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", metadata={"Software": None})
    plt.close(fig)
    if report["ablation"]:
        fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.5), dpi=100, squeeze=False)
        for ax, b in zip(axes[0], benches, strict=True):
            for system, per in report["ablation"].items():
                if b in per:
                    ts = sorted(per[b], key=int)
                    ax.plot([int(t) for t in ts], [per[b][t] for t in ts], marker="o", label=system)
            ax.set(xlabel="max turns", title=LABELS.get(b, b))
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "turn_ablation.png", metadata={"Software": None})
        plt.close(fig)


def write_report(roots: list[Path], out: Path, max_turns: int = 5) -> dict[str, Any]:
    report = build_report(collect(roots), max_turns)
    with atomic_dir(out) as tmp:
        write_json(tmp / REPORT_JSON, report)
        (tmp / REPORT_MD).write_text(to_markdown(report))
        _plots(report, tmp)
    return report
