"""Output folders whole at every instant (storage.atomic_dir), one writer at a time (storage.writer_lock).

Kills are real: a child process writes an output and SIGKILLs itself right after the k-th file-system step of
the swap, for every k until it finishes; the final path must then hold the complete old or the complete new
output, and the next writer must leave no temporary, aside or lock file behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from editthinker import storage
from editthinker.storage import OutputLocked, atomic_dir, exchange

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A writer that dies at step `kill_at` of the swap (0: before it, with the new output complete in its temporary
# folder). Steps are the renames, exchanges and folder removals after the body; each is counted once done.
KILLED_WRITER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path
    from editthinker import storage

    final, tag, kill_at, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    state = {"armed": False, "n": 0}

    def counted(fn):
        def step(*args, **kwargs):
            result = fn(*args, **kwargs)
            if state["armed"]:
                state["n"] += 1
                if state["n"] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result
        return step

    os.rename, os.replace, shutil.rmtree = counted(os.rename), counted(os.replace), counted(shutil.rmtree)
    if hasattr(storage, "exchange"):
        storage.exchange = (lambda a, b: False) if mode == "fallback" else counted(storage.exchange)
    with storage.atomic_dir(final) as tmp:
        for i in range(3):
            (tmp / f"part-{i}").write_text(f"{tag}-{i}")
        state["armed"] = True
        if kill_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    """
)

# Holds the output until told to let go.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from editthinker import storage

    final, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    with storage.atomic_dir(final) as tmp:
        (tmp / "part-0").write_text("holder")
        ready.write_text("holding")
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    """
)


def contents(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def write(folder: Path, tag: str) -> dict[str, str]:
    with atomic_dir(folder) as tmp:
        for i in range(3):
            (tmp / f"part-{i}").write_text(f"{tag}-{i}")
    return {f"part-{i}": f"{tag}-{i}" for i in range(3)}


def child(script: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_kill_at_any_step_of_the_swap_leaves_the_old_or_the_new_output(tmp_path, mode):
    """With RENAME_EXCHANGE the final path is whole right after every kill; on the two-rename fallback a kill
    between the renames leaves it missing, and the next writer puts the old output back before anything else."""
    script = tmp_path / "killed_writer.py"
    script.write_text(KILLED_WRITER)
    data = tmp_path / "data"
    final = data / "out"
    new = {f"part-{i}": f"new-{i}" for i in range(3)}
    kills = 0
    for k in range(10):
        old = write(final, f"old{k}")
        r = child(script, final, "new", k, mode)
        if r.returncode == 0:
            assert contents(final) == new
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        kills += 1
        if mode == "exchange" or contents(final) is not None:
            assert contents(final) in (old, new), f"killed after step {k}"
        with atomic_dir(final) as tmp:  # the next writer: first repairs and cleans up
            assert contents(final) in (old, new), f"killed after step {k}"
            (tmp / "part-0").write_text("next")
        assert [p.name for p in data.iterdir()] == ["out"], f"leftovers after a kill after step {k}"
        assert contents(final) == {"part-0": "next"}
    assert kills == (3 if mode == "exchange" else 4)  # before the swap, and after each of its steps


def test_the_next_writer_removes_what_killed_writers_left(tmp_path):
    data = tmp_path / "data"
    final = data / "out"
    write(final, "old")
    (data / ".out.tmp-abc123").mkdir()
    (data / ".out.tmp-abc123" / "part-0").write_text("half written")
    (data / ".out.old-4242-xyz").mkdir()  # a previous output left aside (the final path is whole: not restored)
    (data / ".out.lock").write_text("")  # a dead writer's lock file (its flock died with it)
    (data / ".out.writer.json").write_text(json.dumps({"pid": 4242, "host": "gone", "command": "x"}))
    (data / ".other.tmp-keep").mkdir()  # another output's: not ours to touch
    new = write(final, "new")
    assert contents(final) == new
    assert sorted(p.name for p in data.iterdir()) == [".other.tmp-keep", "out"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system has no RENAME_EXCHANGE (the documented fallback is tested above)")
    assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the holder exited early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail("the holder did not take the lock within 60 s")
        time.sleep(0.01)


def test_a_second_writer_gets_a_clear_error_naming_the_holder(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    data = tmp_path / "data"
    final = data / "out"
    old = write(final, "old")
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, str(script), str(final), str(ready), str(go)], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(ready, proc)
        with pytest.raises(OutputLocked) as exc, atomic_dir(final) as tmp:
            (tmp / "part-0").write_text("second")
        msg = str(exc.value)
        assert f"{final} is being written by pid {proc.pid} on host {socket.gethostname()}" in msg
        assert "holder.py" in msg  # the holder's command
        assert contents(final) == old  # the second writer changed nothing
        # a stage fails the same way at its start, before doing any work
        from editthinker.config import parse_params
        from editthinker.stages import generate

        with pytest.raises(OutputLocked, match=f"pid {proc.pid}"):
            generate.run(parse_params({"generate": {"num_tasks": 2, "shards": 1}}), final)
    finally:
        go.write_text("go")
        assert proc.wait(timeout=60) == 0
    assert contents(final) == {"part-0": "holder"}
    assert [p.name for p in data.iterdir()] == ["out"]  # lock and holder record removed
    assert write(final, "after") == contents(final)  # free again


def test_the_lock_is_reentrant_in_one_thread_and_exclusive_across_threads(tmp_path):
    import threading

    final = tmp_path / "out"
    errors: list[BaseException] = []
    with storage.writer_lock(final), atomic_dir(final) as tmp:  # a stage holds it, then writes: fine
        (tmp / "x").write_text("1")

        def other() -> None:
            try:
                with atomic_dir(final):
                    pass
            except BaseException as exc:  # noqa: BLE001 (collected for the main thread)
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], OutputLocked) and f"pid {os.getpid()}" in str(errors[0])
    assert contents(final) == {"x": "1"}
