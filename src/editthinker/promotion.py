"""The promotion rule: when a challenger thinker may become champion. Pure functions over evaluation outcomes.

A challenger is promoted only when all of these hold, checked in this order (the first that fails is the
reason it is refused, and the refusal is logged with it):

1. its thinker's answers parse: the share of its critiques that fail the answer format is at most
   `promote.max_format_failure_rate` (a thinker that cannot answer must never win on luck);
2. it beats the editor alone, paired on the same benchmark items: the lower end of the paired interval of
   (challenger - editor alone) on `promote.primary_metric`, at `promote.confidence`, lies above `promote.margin`;
3. it beats the current champion the same way, paired on the items both were scored on (the champion's
   per-item outcomes are stored when it is registered); with no champion yet, (2) is the whole bar. A champion
   scored on another benchmark cannot be compared, so the challenger is not promoted;
4. when `benchmarks.gate` names a public benchmark metric, it clears that gate too (benchmarks.gate).

Per-item outcomes are the evaluate stage's `per_item` records: parallel lists `item` (ids), `success`,
`overall`, `semantic`, `critiques` and `format_failures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from editthinker.stats import PairedDifference, paired_difference

# promote.primary_metric -> the per-item field it is the mean of
ITEM_FIELD = {"success_rate": "success", "overall": "overall", "semantic": "semantic"}


@dataclass(frozen=True)
class Check:
    """One check of the rule: passed or not, why, and the paired difference it rests on (if any)."""

    passed: bool
    reason: str
    difference: PairedDifference | None = None


def format_failure_rate(items: Mapping[str, Sequence[Any]]) -> float:
    """Failed answers / critiques over all items (0 when the thinker was never asked)."""
    asked = sum(int(x) for x in items.get("critiques", []))
    return sum(int(x) for x in items.get("format_failures", [])) / asked if asked else 0.0


def check_format(items: Mapping[str, Sequence[Any]], limit: float) -> Check:
    rate = format_failure_rate(items)
    if rate > limit:
        return Check(False, f"{100 * rate:.1f}% of its answers fail the answer format (limit {100 * limit:.1f}%)")
    return Check(True, f"{100 * rate:.1f}% format failures (limit {100 * limit:.1f}%)")


def _matched(a: Mapping[str, Sequence[Any]], b: Mapping[str, Sequence[Any]], field: str) -> tuple[list, list]:
    """The values of `field` for the items a and b share, in a's order."""
    index = {item: i for i, item in enumerate(b["item"])}
    pairs = [(a[field][i], b[field][index[item]]) for i, item in enumerate(a["item"]) if item in index]
    return [float(x) for x, _ in pairs], [float(y) for _, y in pairs]


def _paired(
    challenger: Mapping[str, Sequence[Any]], other: Mapping[str, Sequence[Any]], metric: str, confidence: float
) -> tuple[PairedDifference | None, str]:
    """challenger - other on `metric` over their shared items (None when they share none), and how it reads."""
    mine, theirs = _matched(challenger, other, ITEM_FIELD[metric])
    if not mine:
        return None, ""
    d = paired_difference(theirs, mine, confidence)
    scale, unit = (100, " points") if metric == "success_rate" else (1, "")
    return d, f"{scale * d.mean:+.3g}{unit} [{scale * d.low:+.3g}, {scale * d.high:+.3g}] over {d.n} items"


def check_beats(
    challenger: Mapping[str, Sequence[Any]],
    other: Mapping[str, Sequence[Any]],
    other_name: str,
    metric: str,
    margin: float,
    confidence: float,
) -> Check:
    """Does the challenger beat `other` on `metric`, paired on their shared items, at `confidence` by `margin`?"""
    d, span = _paired(challenger, other, metric, confidence)
    if d is None:
        return Check(False, f"no benchmark item in common with {other_name}; not comparable")
    if d.above(margin):
        return Check(True, f"{metric} beats {other_name}: {span} at {confidence:.0%}", d)
    return Check(False, f"{metric} does not beat {other_name} by more than {margin}: {span} at {confidence:.0%}", d)


def decide(
    challenger: Mapping[str, Sequence[Any]],
    editor_alone: Mapping[str, Sequence[Any]],
    champion: Mapping[str, Sequence[Any]] | None,
    champion_name: str | None,
    metric: str,
    margin: float,
    confidence: float,
    max_format_failure_rate: float,
) -> list[Check]:
    """The checks of rules 1-3, in order, up to and including the first that fails."""
    checks = [check_format(challenger, max_format_failure_rate)]
    if checks[-1].passed:
        checks.append(check_beats(challenger, editor_alone, "the editor alone", metric, margin, confidence))
    if checks[-1].passed and champion is not None:
        checks.append(check_beats(challenger, champion, f"the champion {champion_name}", metric, margin, confidence))
    return checks


def check_not_below(
    challenger: Mapping[str, Sequence[Any]], start: Mapping[str, Sequence[Any]], metric: str, confidence: float
) -> Check:
    """Is the challenger's mean `metric`, paired on the items it shares with its start, at least the start's? A
    choice between two models to ship (the rl stage's RL-or-SFT), so the point estimate decides; the interval is
    reported beside it."""
    d, span = _paired(challenger, start, metric, confidence)
    if d is None:
        return Check(False, "no validation item in common with its start; not comparable")
    if d.mean < 0:
        return Check(False, f"{metric} is below its start's: {span} at {confidence:.0%}", d)
    return Check(True, f"{metric} is not below its start's: {span} at {confidence:.0%}", d)


def keep_trained(
    trained: Mapping[str, Sequence[Any]],
    start: Mapping[str, Sequence[Any]],
    metric: str,
    confidence: float,
    max_format_failure_rate: float,
) -> list[Check]:
    """Whether a stage keeps the model it trained over the one it started from (per-item validation outcomes of
    both): its answers keep the format, and its `metric` is not below the start's. Up to the first failed check."""
    checks = [check_format(trained, max_format_failure_rate)]
    if checks[-1].passed:
        checks.append(check_not_below(trained, start, metric, confidence))
    return checks
