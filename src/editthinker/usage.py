"""API usage of the roles that call an API (calls, cached calls, retries, failed calls, tokens, cost), as stages
record it beside their outputs.

Usage goes in manifests and summaries, never into the data itself: cache hits change it, the data's bytes do not.
"""

from __future__ import annotations

Usage = dict[str, dict[str, float]]


def api_usage(**roles: object) -> Usage:
    """{role name: counts} for each role that keeps a `usage` record (synthetic backends keep none)."""
    return {name: dict(r.usage.as_dict()) for name, r in roles.items() if hasattr(r, "usage")}  # type: ignore[attr-defined]


def sum_usage(parts: list[Usage]) -> Usage:
    """Counts of several runs (e.g. generation shards) added up per role and key."""
    total: Usage = {}
    for part in parts:
        for role, counts in part.items():
            for k, v in counts.items():
                total.setdefault(role, {})[k] = total.get(role, {}).get(k, 0) + v
    return total
