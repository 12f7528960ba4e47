"""generate resumes: units written as they finish; a rerun after a failure, a kill -9 or a reached budget loads
the finished units (no expert, judge or editor request of theirs is asked again) and writes the dataset an
uninterrupted run writes, byte for byte. The expert and the judge sit behind the counting stub server
(tests/openai_stub.py, request cache off), the editor behind a counting HTTP editor service."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from editthinker.backends.http_editor import EditorServer, make_app
from editthinker.backends.synthetic import SyntheticEditor
from editthinker.config import parse_params
from editthinker.records import read_manifest
from editthinker.stages import generate
from editthinker.stages.generate import BudgetReached, GenerationFailed
from openai_stub import Action, Status, StubOpenAIServer
from test_api_faults import answers

REPO = Path(__file__).resolve().parents[1]
FAULT = Status(500)


class CountingEditor(SyntheticEditor):
    """A synthetic editor that records a key of every edit request it is asked."""

    def __init__(self) -> None:
        super().__init__("painter", "painter", 64)
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def edit(self, requests):  # type: ignore[no-untyped-def]
        with self._lock:
            self.asked += [_key({"png": hashlib.sha256(r.source_png).hexdigest(), "i": r.instruction, "s": r.seed})
                           for r in requests]  # fmt: skip
        return super().edit(requests)


def _key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def raw_params(api_url: str, editor_url: str, **generate_: Any) -> dict[str, Any]:
    api = {"kind": "openai", "base_url": api_url, "model": "stub", "timeout_s": 10.0, "max_retries": 0,
           "concurrency": 4, "cache_dir": "", "price_per_1k_input": 0.5, "price_per_1k_output": 1.0}  # fmt: skip
    return {
        "world": {"image_size": 64},
        "editors": [{"name": "painter", "kind": "http", "url": editor_url, "retries": 0}],
        "expert": api,
        "judge": {**api, "format_retries": 0},
        "generate": {"num_tasks": 12, "max_turns": 3, "shards": 2, "unit_tasks": 2, **generate_},
    }


@pytest.fixture
def services():
    editor = CountingEditor()
    with StubOpenAIServer(respond=answers) as srv, EditorServer(make_app(editor)) as ed:
        yield srv, editor, ed.url


def requests_by_unit(params, srv: StubOpenAIServer, editor: CountingEditor) -> dict[str, set[range]]:
    """Which unit asks each request (expert, judge or editor): each unit generated alone, in process."""
    roles = generate._Roles.build(params)
    owner: dict[str, set[range]] = {}
    for unit in generate.unit_ranges(range(params.generate.num_tasks), params.generate.unit_tasks):
        n_api, n_edit = len(srv.requests), len(editor.asked)
        generate._unit_rows(params, roles, unit)
        for k in [_key(b) for b in srv.requests[n_api:]] + editor.asked[n_edit:]:
            owner.setdefault(k, set()).add(unit)
    return owner


def asked(srv: StubOpenAIServer, editor: CountingEditor, since: tuple[int, int]) -> list[str]:
    return [_key(b) for b in srv.requests[since[0] :]] + editor.asked[since[1] :]


def finished_units(out: Path) -> set[range]:
    return {
        range(*(int(x) for x in d.name.split("-")[1:]))
        for d in generate.units_root(out).glob("*/unit-*")
        if (d / "manifest.json").exists()
    }


def test_units_are_a_fixed_grid_cut_to_the_indices() -> None:
    assert generate.unit_ranges(range(0, 10), 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert generate.unit_ranges(range(5, 10), 4) == [range(5, 8), range(8, 10)]  # a shard's: the same grid
    assert generate.unit_ranges(range(3, 3), 4) == []
    for start, stop, size in [(0, 37, 5), (13, 100, 7), (9, 10, 64)]:
        units = generate.unit_ranges(range(start, stop), size)
        assert [i for u in units for i in u] == list(range(start, stop))
        assert all(u.start % size == 0 for u in units[1:]) and all(len(u) <= size for u in units)


def test_a_failed_run_keeps_its_finished_units_and_the_rerun_asks_none_of_them_again(tmp_path, services) -> None:
    srv, editor, editor_url = services
    params = parse_params(raw_params(srv.base_url, editor_url))
    reference = generate.run(params, tmp_path / "reference")
    assert not generate.units_root(tmp_path / "reference").exists()  # removed once the dataset is written
    owner = requests_by_unit(params, srv, editor)
    # the expert fails on the 8th task's instruction: units [0,2) .. [4,6) finish, [6,8) fails; no unit starts
    # after the failure, and the one running beside [6,8) finishes and is kept ([4,6), and [8,10) if it had started)
    doomed = generate.unit_ranges(range(12), 2)[3]
    broken = {"on": True}

    def respond(body: dict[str, Any]) -> Action:
        if broken["on"] and owner.get(_key(body)) == {doomed}:
            return FAULT
        return answers(body)

    srv.respond = respond
    out = tmp_path / "traj"
    with pytest.raises(GenerationFailed):
        generate.run(params, out)
    assert not out.exists()
    done = finished_units(out)
    assert {range(0, 2), range(2, 4), range(4, 6)} <= done <= {range(0, 2), range(2, 4), range(4, 6), range(8, 10)}
    broken["on"] = False
    since = (len(srv.requests), len(editor.asked))
    resumed = generate.run(params, out)
    again = asked(srv, editor, since)
    assert again and all(not (owner[k] & done) for k in again)  # nothing of a finished unit asked again
    assert resumed["dataset_sha256"] == reference["dataset_sha256"]
    assert not generate.units_root(out).exists()
    # the resumed dataset's usage adds up its units' (the failed unit's calls are not in it)
    usage, ref_usage = read_manifest(out)["api_usage"], read_manifest(tmp_path / "reference")["api_usage"]
    assert usage["expert"]["calls"] == ref_usage["expert"]["calls"]
    assert usage["judge"]["cost_usd"] == pytest.approx(ref_usage["judge"]["cost_usd"])


def test_other_params_never_resume_and_restart_starts_over(tmp_path, services) -> None:
    srv, editor, editor_url = services
    raw = raw_params(srv.base_url, editor_url)
    params = parse_params(raw)
    out = tmp_path / "traj"
    with pytest.raises(BudgetReached):
        generate.run(parse_params({**raw, "generate": {**raw["generate"], "budget": {"max_calls": 1}}}), out)
    # checked before each unit starts: the first two start at once (two in flight), then it stops
    assert {range(0, 2)} <= finished_units(out) <= {range(0, 2), range(2, 4)}
    other = parse_params({**raw, "generate": {**raw["generate"], "max_turns": 2}})
    assert generate.resume_key(other) != generate.resume_key(params)
    # the budget is not part of the key: a larger one continues
    assert generate.resume_key(params) == generate.resume_key(
        parse_params({**raw, "generate": {**raw["generate"], "budget": {"max_cost": 3.0}}})
    )
    since = (len(srv.requests), len(editor.asked))
    generate.run(params, tmp_path / "unit0", restart=True)  # another output: its own units
    first_unit_requests = len(asked(srv, editor, since))
    since = (len(srv.requests), len(editor.asked))
    generate.run(params, out, restart=True)
    assert len(asked(srv, editor, since)) == first_unit_requests  # everything asked again, unit [0,2) too
    assert not generate.units_root(out).exists()


def test_the_budget_stops_at_a_unit_boundary_and_a_larger_one_continues(tmp_path, services) -> None:
    srv, editor, editor_url = services
    raw = raw_params(srv.base_url, editor_url)
    reference = generate.run(parse_params(raw), tmp_path / "reference")
    ref_cost = sum(u["cost_usd"] for u in read_manifest(tmp_path / "reference")["api_usage"].values())
    out = tmp_path / "traj"
    budget = round(ref_cost / 3, 4)  # about a third of the run
    capped = parse_params({**raw, "generate": {**raw["generate"], "budget": {"max_cost": budget}}})
    with pytest.raises(BudgetReached) as info:
        generate.run(capped, out)
    done = finished_units(out)
    assert 0 < len(done) < 6 and not out.exists()
    message = str(info.value)
    spent = float(message.split("spent cost ")[1].split(" ")[0])
    assert spent >= budget
    assert f"{len(done)} of 6 units done; rerun with a larger generate.budget to continue" in message
    with pytest.raises(BudgetReached):  # the same budget: stops again at once, asking nothing
        since = (len(srv.requests), len(editor.asked))
        generate.run(capped, out)
    assert asked(srv, editor, since) == [] and finished_units(out) == done
    larger = parse_params({**raw, "generate": {**raw["generate"], "budget": {"max_cost": ref_cost * 2}}})
    assert generate.run(larger, out)["dataset_sha256"] == reference["dataset_sha256"]


def test_units_in_flight_each_record_their_own_calls(tmp_path, services) -> None:
    srv, editor, editor_url = services
    params = parse_params(raw_params(srv.base_url, editor_url, budget={"max_calls": 20}))
    assert params.generate.units_in_flight == 2  # the default: two units share the roles at once
    owner = requests_by_unit(params, srv, editor)
    since = len(srv.requests)
    with pytest.raises(BudgetReached):  # stops part-way, the finished units kept with their manifests
        generate.run(params, tmp_path / "traj")
    asked_by: dict[range, int] = {}
    for body in srv.requests[since:]:
        (unit,) = owner[_key(body)]
        asked_by[unit] = asked_by.get(unit, 0) + 1
    done = finished_units(tmp_path / "traj")
    assert len(done) >= 2
    for d in generate.units_root(tmp_path / "traj").glob("*/unit-*"):
        unit = range(*(int(x) for x in d.name.split("-")[1:]))
        if unit in done:
            usage = read_manifest(d)["api_usage"]
            assert usage["expert"]["calls"] + usage["judge"]["calls"] == asked_by[unit] > 0


def test_the_cli_reports_a_reached_budget_and_exits_nonzero(tmp_path, services) -> None:
    from typer.testing import CliRunner

    from editthinker.cli import app

    srv, _, editor_url = services
    raw = raw_params(srv.base_url, editor_url, budget={"max_calls": 5})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["generate", "-p", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "budget reached: spent" in text and "of 5 calls" in text and "rerun with a larger generate.budget" in text


def _wait(cond, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll `cond` until it holds (True) or `proc` ends (False); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"no progress in {timeout} s")


@pytest.mark.slow
def test_kill_9_at_seeded_moments_and_resume_gives_the_uninterrupted_dataset(tmp_path, services) -> None:
    srv, editor, editor_url = services
    srv.delay_s = 0.005  # a slowish expert and judge
    raw = raw_params(srv.base_url, editor_url)
    params = parse_params(raw)
    reference = generate.run(params, tmp_path / "reference")
    owner = requests_by_unit(params, srv, editor)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "traj"
    cmd = [sys.executable, "-m", "editthinker.cli", "generate", "-p", str(tmp_path / "p.yaml"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    rng = random.Random(20240607)
    kills, resumed = 0, []
    for attempt in range(12):
        done = finished_units(out)
        resumed.append(len(done))
        since = (len(srv.requests), len(editor.asked))
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        left = sum(1 for units in owner.values() if not units & done)  # requests of the units still to do
        moment = rng.randint(1, max(1, left // 2))  # kill after this many requests of this run
        if kills < 5 and _wait(lambda: len(asked(srv, editor, since)) >= moment, proc):  # noqa: B023
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=120)
        again = asked(srv, editor, since)
        repeated = [k for k in again if owner[k] & done]
        assert repeated == [], f"run {attempt} asked {len(repeated)} requests of units finished before it"
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err.decode()
    assert kills >= 5 and max(resumed) > 0, resumed  # killed 5 times, and some run resumed finished units
    assert read_manifest(out)["dataset_sha256"] == reference["dataset_sha256"]
    assert _files(out / "images") == _files(tmp_path / "reference" / "images")  # the image store too
    assert not generate.units_root(out).exists()


def test_units_in_flight_never_change_the_data_nor_what_a_rerun_resumes(tmp_path) -> None:
    made = {}
    for width in (1, 3):
        params = parse_params({"generate": {"num_tasks": 13, "unit_tasks": 3, "units_in_flight": width}})
        made[width] = (generate.run(params, tmp_path / f"w{width}")["dataset_sha256"], generate.resume_key(params))
        assert _files(tmp_path / f"w{width}" / "images")  # an image store was written
    assert made[1] == made[3]
    assert _files(tmp_path / "w1" / "images") == _files(tmp_path / "w3" / "images")


def test_a_retried_shard_resumes_its_units_and_gathers_to_the_run(tmp_path, monkeypatch) -> None:
    params = parse_params({"generate": {"num_tasks": 13, "shards": 3, "unit_tasks": 3}})  # synthetic roles
    direct = generate.run(params, tmp_path / "direct")
    real, made = generate._unit_rows, []

    def dying(p, roles, unit, *rest):  # type: ignore[no-untyped-def]
        if len(made) == 1:
            raise KeyboardInterrupt("killed")  # the pod dies in its second unit
        made.append(unit)
        return real(p, roles, unit, *rest)

    monkeypatch.setattr(generate, "_unit_rows", dying)
    dirs = [tmp_path / f"shard-{k}" for k in range(3)]
    assert generate.unit_ranges(generate.shard_tasks(params, 1), 3) == [range(4, 6), range(6, 8)]
    with pytest.raises(KeyboardInterrupt):
        generate.run_shard(params, 1, dirs[1])
    assert finished_units(dirs[1]) == {range(4, 6)}  # beside the shard's output
    monkeypatch.setattr(
        generate, "_unit_rows", lambda p, roles, unit, *rest: made.append(unit) or real(p, roles, unit, *rest)
    )
    for k in range(3):
        generate.run_shard(params, k, dirs[k])
    assert made.count(range(4, 6)) == 1 and range(6, 8) in made  # the finished unit was not made again
    assert generate.gather(params, dirs, tmp_path / "gathered") == direct
    # the gathered image store (merged from the shards' stores) is the direct run's, byte for byte
    assert _files(tmp_path / "gathered" / "images") == _files(tmp_path / "direct" / "images")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
