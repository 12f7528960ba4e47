"""API usage of the roles that call an API (calls, cached calls, retries, failed calls, tokens, cost), as stages
record it beside their outputs.

Usage goes in manifests and summaries, never into the data itself: cache hits change it, the data's bytes do not.

`usage_scope()` counts the calls made inside a block apart from the clients' totals: those made on its thread,
and on the threads and tasks started from it with its context (the loop's judge thread, the API clients' event
loop), so jobs running at once (generate's units) each get their own calls' usage.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

Usage = dict[str, dict[str, float]]


class UsageScope:
    """The usage of the calls made inside one `usage_scope()` block, per role (and of its enclosing scopes)."""

    def __init__(self, parent: UsageScope | None) -> None:
        self.parent = parent
        self._lock = threading.Lock()
        self._counts: Usage = {}

    def add(self, role: str, deltas: dict[str, float]) -> None:
        with self._lock:
            counts = self._counts.setdefault(role, {})
            for k, v in deltas.items():
                counts[k] = counts.get(k, 0) + v
        if self.parent is not None:
            self.parent.add(role, deltas)

    def usage(self, like: Usage) -> Usage:
        """The counts, shaped as `like` (`api_usage` of the roles: every role and key, zeros included); a role is
        named as its client names it (`OpenAIChatClient(cfg, "expert")`), which is also its `api_usage` name."""
        with self._lock:
            return {
                role: {k: type(v)(round(self._counts.get(role, {}).get(k, 0), 6)) for k, v in keys.items()}
                for role, keys in like.items()
            }


_SCOPE: contextvars.ContextVar[UsageScope | None] = contextvars.ContextVar("api_usage_scope", default=None)


@contextmanager
def usage_scope() -> Iterator[UsageScope]:
    """Count the API calls made inside the block (see the module's note)."""
    scope = UsageScope(_SCOPE.get())
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def record(role: str, **deltas: float) -> None:
    """Add a call's counts to the scopes of the current context (a client calls this as it counts its own)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.add(role, deltas)


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
