"""Read-only views of a registry, local or on S3, for the `editthinker registry` commands: the list of versions,
one version in full, two versions compared. Each is plain data (what `--json` prints); `*_table` renders it for
a terminal with rich."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from editthinker.model_card import flatten
from editthinker.registry import RegistryBackend

_MISSING = object()


def _metric_text(metrics: dict[str, Any], primary: str | None) -> str:
    keys = sorted(metrics, key=lambda k: (k != primary, k))
    return "  ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys)


# --- list ----------------------------------------------------------------------------------------------------
def list_versions(reg: RegistryBackend) -> list[dict[str, Any]]:
    """One row per version, oldest first: version, champion flag, checkpoint hash, when, metrics, git commit."""
    champion = reg.champion()
    rows = []
    for version, rec in reg.records().items():
        git = rec.get("git") or {}
        rows.append(
            {
                "version": version,
                "champion": version == champion,
                "checkpoint_sha256": rec.get("checkpoint_sha256"),
                "registered_at": rec.get("registered_at"),
                "metrics": dict(rec.get("metrics") or {}),
                "git_commit": git.get("commit"),
                "git_dirty": git.get("dirty"),
                "stage": (rec.get("lineage") or {}).get("stage"),
            }
        )
    return rows


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def versions_table(rows: list[dict[str, Any]], primary_metric: str | None = None) -> Table:
    """One line per version, a column per metric (the primary one first)."""
    table = Table(title="registry versions (* = champion)")
    metrics = sorted({k for r in rows for k in r["metrics"]}, key=lambda k: (k != primary_metric, k))
    for col in ("", "version", "checkpoint", "created (UTC)", *metrics, "git"):
        table.add_column(col, justify="right" if col in metrics else "left")
    for r in rows:
        commit = r["git_commit"][:10] + ("*" if r["git_dirty"] else "") if r["git_commit"] else "-"
        values = [r["metrics"].get(k) for k in metrics]
        table.add_row(
            "*" if r["champion"] else "",
            r["version"],
            (r["checkpoint_sha256"] or "-")[:12],
            _when(r["registered_at"]),
            *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in values),
            commit,
        )
    if any(r["git_dirty"] for r in rows):
        table.caption = "git *: registered from a work tree with uncommitted changes"
    return table


# --- show ----------------------------------------------------------------------------------------------------
def show_version(reg: RegistryBackend, ref: str) -> dict[str, Any]:
    """A version (or alias) in full: its record, whether it is champion, its decisions and its model card."""
    rec = reg.registered(ref)
    version = str(rec["version"])
    return {
        "version": version,
        "champion": reg.champion() == version,
        "registered": rec,
        "decisions": [d for d in reg.decisions() if d.get("version") == version],
        "card": reg.card(version),
    }


def version_table(view: dict[str, Any]) -> Table:
    """The metadata part of `show` (the card is printed after it, as markdown)."""
    rec = view["registered"]
    git = rec.get("git") or {}
    table = Table(title=f"{view['version']}" + (" (champion)" if view["champion"] else ""), show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("checkpoint sha256", rec.get("checkpoint_sha256")),
        ("registered at", rec.get("registered_at")),
        ("registered by", rec.get("registered_by")),
        ("git commit", (git.get("commit") or "-") + (" (dirty)" if git.get("dirty") else "") if git else "-"),
        ("training code matches", rec.get("training_code_matches")),
        ("eval summary sha256", rec.get("eval_summary_sha256")),
        ("benchmark sha256", rec.get("benchmark_sha256")),
        ("card sha256", rec.get("card_sha256")),
        ("metrics", _metric_text(rec.get("metrics") or {}, None)),
    ]
    for stage, p in (rec.get("params") or {}).items():
        known = "values recorded" if p.get("values") is not None else (p.get("source") or "values unknown")
        rows.append((f"params ({stage})", f"{p.get('sha256')} [{', '.join(p.get('sections') or [])}]: {known}"))
    for d in view["decisions"]:
        what = d.get("action", "register")
        rows.append((f"decision {d.get('time', '')}", f"{what}: promoted={d.get('promoted')}; {d.get('reason')}"))
    for field, value in rows:
        table.add_row(field, "-" if value is None else str(value))
    return table


# --- compare -------------------------------------------------------------------------------------------------
def _params_flat(rec: dict[str, Any]) -> dict[str, Any]:
    """{"<stage>: <section>.<key>": value} over every stage's recorded params values."""
    out: dict[str, Any] = {}
    for stage, p in (rec.get("params") or {}).items():
        values = p.get("values")
        if values is not None:
            out.update({f"{stage}: {k}": v for k, v in flatten(values).items()})
    return out


def compare_versions(reg: RegistryBackend, a: str, b: str) -> dict[str, Any]:
    """Two versions side by side: every metric with b - a, every params value that differs (absent on one side
    shows as null, with `only_in`), and whether the two were scored on the same benchmark."""
    ra, rb = reg.registered(a), reg.registered(b)
    ma, mb = ra.get("metrics") or {}, rb.get("metrics") or {}
    metrics = []
    for k in sorted(set(ma) | set(mb)):
        va, vb = ma.get(k), mb.get(k)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb))
        delta = vb - va if numbers and math.isfinite(vb - va) else None  # type: ignore[operator]
        metrics.append({"metric": k, "a": va, "b": vb, "delta": delta})
    pa, pb = _params_flat(ra), _params_flat(rb)
    params = []
    for k in sorted(set(pa) | set(pb)):
        va, vb = pa.get(k, _MISSING), pb.get(k, _MISSING)
        if va != vb:
            only = "a" if vb is _MISSING else "b" if va is _MISSING else None
            params.append(
                {"key": k, "a": None if va is _MISSING else va, "b": None if vb is _MISSING else vb, "only_in": only}
            )
    unknown = [
        f"{side}: {stage}"
        for side, rec in (("a", ra), ("b", rb))
        for stage, p in (rec.get("params") or {}).items()
        if p.get("values") is None
    ]
    return {
        "a": ra["version"],
        "b": rb["version"],
        "checkpoint_sha256": {"a": ra.get("checkpoint_sha256"), "b": rb.get("checkpoint_sha256")},
        "same_benchmark": ra.get("benchmark_sha256") is not None
        and ra.get("benchmark_sha256") == rb.get("benchmark_sha256"),
        "metrics": metrics,
        "params": params,
        "params_unknown": unknown,
    }


def comparison_tables(cmp: dict[str, Any]) -> list[Table]:
    a, b = cmp["a"], cmp["b"]
    bench = "same benchmark" if cmp["same_benchmark"] else "DIFFERENT benchmarks: metrics not comparable"
    metrics = Table(title=f"metrics: {a} -> {b} ({bench})")
    for col in ("metric", a, b, f"{b} - {a}"):
        metrics.add_column(col)
    for m in cmp["metrics"]:
        delta = "-" if m["delta"] is None else f"{m['delta']:+.4g}"
        metrics.add_row(m["metric"], str(m["a"]), str(m["b"]), delta)
    params = Table(title=f"params that differ ({len(cmp['params'])})")
    for col in ("key", a, b):
        params.add_column(col)
    for p in cmp["params"]:
        params.add_row(
            p["key"],
            "(absent)" if p["only_in"] == "b" else repr(p["a"]),
            "(absent)" if p["only_in"] == "a" else repr(p["b"]),
        )
    if cmp["params_unknown"]:
        params.caption = "params values not recorded for " + ", ".join(cmp["params_unknown"])
    return [metrics, params]
