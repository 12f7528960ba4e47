"""Eval summaries in the evaluate stage's shape for promotion tests: per-item outcomes of the editor alone and of
the challenger (editor+rl), from which the promotion rule pairs systems item by item."""

from __future__ import annotations

from typing import Any


def per_item(overall: float | list[float], n: int, success_rate: float = 0.5, failures: int = 0) -> dict[str, Any]:
    """n items (`t<i>@painter`) with these overall scores (one value for all, or one per item); the first
    round(success_rate * n) succeed; `failures` format failures over n critiques."""
    scores = [float(overall)] * n if isinstance(overall, int | float) else [float(x) for x in overall]
    wins = round(success_rate * n)
    return {
        "item": [f"t{i:03d}@painter" for i in range(n)],
        "success": [i < wins for i in range(n)],
        "overall": scores,
        "semantic": [s + 0.5 for s in scores],
        "critiques": [1] * n,
        "format_failures": [1 if i < failures else 0 for i in range(n)],
    }


def summary(
    overall: float,
    lineage: dict[str, Any],
    *,
    success_rate: float = 0.5,
    editor_overall: float = 0.0,
    n: int = 20,
    failures: int = 0,
    systems: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A summary whose challenger scores `overall` on every item and the editor alone `editor_overall`."""
    challenger = {"success_rate": success_rate, "overall": overall, "semantic": overall + 0.5,
                  "format_failure_rate": failures / n}  # fmt: skip
    return {
        "systems": systems or {"challenger": challenger},
        "challenger": challenger,
        "per_item": {
            "editor": per_item(editor_overall, n, 0.0),
            "editor+rl": per_item(overall, n, success_rate, failures),
        },
        "lineage": lineage,
    }
