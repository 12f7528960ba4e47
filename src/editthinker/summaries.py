"""One line per stage that says what it did: the CLI prints it when a stage finishes.

Each stage's `run` returns structured results (a dataset manifest, training metrics, the evaluation summary,
the promotion record); `describe` turns one into a sentence with the numbers a person checks first and where
the output went. A stage this module does not know gets its scalar results as `key=value` pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Result = Mapping[str, Any]


def _n(x: Any) -> str:
    """An integer with thousands separators."""
    return f"{int(x):,}"


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def _secs(x: Any) -> str:
    return "" if x is None else f" in {float(x):.1f} s"


def _usage(result: Result) -> str:
    """API calls and cost, when a stage used an API role (the manifest's or summary's `api_usage`)."""
    usage = result.get("api_usage") or {}
    roles = [u for u in usage.values() if isinstance(u, Mapping)]
    calls = sum(int(u.get("calls", 0)) for u in roles)
    cached = sum(int(u.get("cached_calls", 0)) for u in roles)
    if not calls and not cached:
        return ""
    cost = sum(float(u.get("cost_usd") or 0.0) for u in roles)
    return f"; {_n(calls)} API calls ({_n(cached)} more from the cache), ${cost:.2f}"


def _generate(r: Result) -> str:
    editors = sorted(k.split(":", 1)[1] for k in r.get("lineage", {}).get("models", {}) if k.startswith("editor:"))
    by = f" over editors {', '.join(editors)}" if editors else ""
    return f"{_n(r.get('trajectories', 0))} trajectories, {_n(r['rows'])} turns{by}{_usage(r)}"


def _filter(r: Result) -> str:
    kept, dropped = int(r.get("kept", 0)), int(r.get("dropped", 0))
    cut = int(r.get("truncated_turns", 0))
    return (
        f"kept {_n(kept)} of {_n(kept + dropped)} trajectories ({_n(dropped)} dropped), {_n(r['rows'])} turns kept, "
        f"{_n(cut)} turns cut after the best"
    )


def _split(r: Result) -> str:
    sft, rl = r["sft"], r["rl"]
    unrolled = int(sft.get("unbalanced_rows", sft["rows"])) + int(rl.get("unbalanced_rows", rl["rows"]))
    balanced_away = unrolled - int(sft["rows"]) - int(rl["rows"])
    source = f" from {_n(r['trajectories'])} trajectories" if "trajectories" in r else ""
    rl_traj = f" ({_n(r['rl_trajectories'])} high-variance trajectories to RL)" if "rl_trajectories" in r else ""
    return (
        f"{_n(sft['rows'])} SFT / {_n(rl['rows'])} RL step samples{source}{rl_traj}, "
        f"{_n(balanced_away)} of {_n(unrolled)} dropped by balancing"
    )


def _validate(r: Result) -> str:
    datasets: Mapping[str, Any] = r.get("datasets", {})
    parts = [f"{name} {_n(d.get('rows', 0))} rows" for name, d in datasets.items()]
    counts = [d.get("counts", {}) for d in datasets.values()]
    expectations = sum(int(c.get("expectations", 0)) for c in counts)
    failed = sum(int(c.get("failed", 0)) for c in counts)
    verdict = "PASS" if r.get("success") else "FAIL"
    return f"{verdict}: {', '.join(parts)}; {_n(expectations)} expectations, {_n(failed)} failed"


def _training(curve_key: str, label: str) -> Callable[[Result], str]:
    def describe(r: Result) -> str:
        curve: Sequence[float] = r.get(curve_key) or []
        trend = f", {label} {_f(curve[0])} -> {_f(curve[-1])}" if curve else ""
        steps, samples = _n(r.get("steps", 0)), _n(r.get("samples", 0))
        return f"{steps} optimizer steps on {samples} samples{_secs(r.get('wall_seconds'))}{trend}"

    return describe


def _evaluate(r: Result) -> str:
    systems: Mapping[str, Mapping[str, Any]] = r.get("systems", {})
    if not systems:
        return "no systems evaluated"
    first = next(iter(systems.values()))
    editors = [e for e in first if e != "all"]
    n = int(first.get("all", {}).get("n", 0))
    rates = ", ".join(f"{s} {_pct(m.get('all', {}).get('success_rate'))}" for s, m in systems.items())
    lift = r.get("lift_over_editor_alone", {})
    challenger = r.get("challenger", {})
    return (
        f"{_n(n)} episodes ({_n(n // max(1, len(editors)))} tasks x {len(editors)} editors) per system; success "
        f"{rates}; challenger overall {_f(challenger.get('overall'))} ({float(lift.get('overall', 0.0)):+.2f} "
        f"over the editor alone){_usage(r)}"
    )


def _promote(r: Result) -> str:
    version = r.get("version", "?")
    registered = "registered" if r.get("registered_new", True) else "already registered"
    if r.get("promoted"):
        return f"{version} {registered}, now champion ({r.get('reason', '')})"
    return f"{version} {registered}, not promoted: {r.get('reason', '')}; champion stays {r.get('champion')}"


def _edit(r: Result) -> str:
    turns = r.get("turns") or []
    return f"{len(turns)} turn(s), stopped: {r.get('stop_reason', '?')}"


DESCRIBERS: dict[str, Callable[[Result], str]] = {
    "generate": _generate,
    "filter": _filter,
    "split": _split,
    "validate": _validate,
    "sft": _training("loss_curve", "loss"),
    "rl": _training("reward_curve", "reward"),
    "evaluate": _evaluate,
    "promote": _promote,
    "edit": _edit,
}


def _scalars(result: Result) -> str:
    items = [(k, v) for k, v in result.items() if isinstance(v, str | int | float | bool) or v is None]
    return ", ".join(f"{k}={_f(v, 3) if isinstance(v, float) else v}" for k, v in items) or "finished"


def describe(stage: str, result: Any, outputs: Sequence[str | Path] = ()) -> str:
    """`<stage> done: <what it did> -> <outputs>`, one line."""
    text = "finished"
    if isinstance(result, Mapping) and result:
        describer = DESCRIBERS.get(stage)
        try:
            text = describer(result) if describer else _scalars(result)
        except (KeyError, TypeError, ValueError):  # a result of another shape: still say something true
            text = _scalars(result)
    where = f" -> {', '.join(str(o) for o in outputs)}" if outputs else ""
    return f"{stage} done: {text}{where}"


def report_metrics(scalars: Mapping[str, float], log_metric: Callable[[str, float], None], path: Path) -> None:
    """What a pipeline step shows of its numbers: each through `log_metric` (KFP's `Metrics.log_metric`), and the
    same as JSON at `path` (an artifact without a file is a cache miss for kfp.local, and nothing to browse)."""
    for name, value in scalars.items():
        log_metric(name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(scalars), indent=2) + "\n")
