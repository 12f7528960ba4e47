"""Jobs run a few at a time on worker threads, their results handled on the caller's thread as they finish.

Generate runs its units this way: while one unit waits on the expert's and the judge's APIs, another edits and
scores, so neither the editors nor the API connections sit idle at a unit's start and tail.

A role shared by jobs running at once is called from several threads. Roles that are safe for that say so
(`thread_safe = True`: the API clients, the HTTP editor, the synthetic and stand-in roles); any other (a
diffusers pipeline) is wrapped in `Serialized`, which lets one call in at a time.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


class Cancelled(RuntimeError):
    """A job stopped at one of its safe points because the run was interrupted."""


def check(cancel: threading.Event) -> None:
    """A job's safe point: raises Cancelled once the run is being stopped."""
    if cancel.is_set():
        raise Cancelled("stopped: the run was interrupted")


def run_in_flight(jobs: Iterable[Callable[[threading.Event], T]], width: int, done: Callable[[T], None]) -> None:
    """Run the jobs `jobs` gives, at most `width` at once, each on a worker thread (in the caller's context) and
    given the run's cancel event, which it checks at its safe points (`check`). `jobs` is drawn from only when a
    worker is free, so it can decide, job by job, whether to go on. `done(result)` runs on this thread as each job
    finishes.

    A job that fails stops the drawing of new jobs: the others running finish (their `done` runs; what they did is
    not thrown away), and then the first failure is raised. An exception on this thread (from `jobs`, from `done`,
    or an interrupt) sets the cancel event instead, and is raised once the running jobs have stopped."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    cancel = threading.Event()
    pool = ThreadPoolExecutor(width, thread_name_prefix="in-flight")
    running: dict[Future[T], int] = {}
    failure: BaseException | None = None
    source = iter(jobs)
    started = 0
    try:
        while True:
            while failure is None and len(running) < width:
                job = next(source, None)
                if job is None:
                    break
                running[pool.submit(contextvars.copy_context().run, job, cancel)] = started
                started += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=running.__getitem__):
                del running[future]
                error = future.exception()
                if error is None:
                    done(future.result())
                elif failure is None:
                    failure = error
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure


class Serialized:
    """A role whose calls take a lock of its own: one call at a time, from whichever thread."""

    def __init__(self, role: Any) -> None:
        self._role = role
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._role, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return call


def shared(role: T) -> T:
    """`role` itself when it is safe to call from several threads at once (`thread_safe = True`), else wrapped
    in `Serialized`."""
    if getattr(role, "thread_safe", False):
        return role
    return Serialized(role)  # type: ignore[return-value]
