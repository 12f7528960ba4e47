"""Benchmark runs (editthinker.benchmarks): loaders of the distributed formats, the official output layouts,
per-edit caching, resume after a kill, failed batches. The judge is not involved here (test_benchmark_scoring)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from benchmark_fixtures import GEDIT, IMGEDIT, KRIS, RISE, StandInEditor, write, write_gedit, write_risebench
from editthinker.benchmarks import get_benchmark, runner
from editthinker.config import parse_params
from editthinker.protocol import format_expert_answer
from openai_stub import Answer, StubOpenAIServer

PARAMS = parse_params({})


def _run(tmp_path: Path, benchmark: str, data: str, editor=None, system="editor", turns=5, params=PARAMS, **kw):
    editor = editor or StandInEditor()
    return runner.run(
        params, benchmark, data, editor.name, system, turns, tmp_path / "runs", editors={editor.name: editor}, **kw
    )


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- loaders -----------------------------------------------------------------------------------------------
def test_gedit_loads_english_rows_of_a_save_to_disk_folder_and_of_bare_shards(tmp_path):
    data = write_gedit(tmp_path / "gedit")
    items = get_benchmark("gedit").load(str(data), PARAMS.benchmarks).items
    assert [it.item_id for it in items] == [k for k, *_ in GEDIT]
    assert [it.instruction for it in items] == [ins for _, _, ins, _, _ in GEDIT]  # not the CN copies
    assert [it.meta["intersection"] for it in items] == [i for *_, i in GEDIT]
    with Image.open(io.BytesIO(items[1].load_source())) as im:
        assert im.size == GEDIT[1][3]
    cn = get_benchmark("gedit").load(str(data), parse_params({"benchmarks": {"gedit": {"language": "cn"}}}).benchmarks)
    assert all(it.instruction.startswith("中文") for it in cn.items) and len(cn.items) == len(GEDIT)
    for name in ("state.json", "dataset_info.json"):  # shards as uploaded to the hub, without the metadata files
        (data / name).unlink()
    assert len(get_benchmark("gedit").load(str(data), PARAMS.benchmarks).items) == len(GEDIT)


def test_imgedit_kris_and_risebench_loaders(tmp_path):
    img = get_benchmark("imgedit").load(write("imgedit", tmp_path / "imgedit"), PARAMS.benchmarks)
    assert [it.item_id for it in img.items] == ["22", "105", "1166", "1168"]  # numeric order of the string keys
    assert img.items[1].meta["id"] == "daily object/2.jpg" and img.items[1].category == "add"

    kris = get_benchmark("kris").load(write("kris", tmp_path / "kris"), PARAMS.benchmarks)
    assert kris.excluded == {"temporal_prediction/1": "multi-image temporal prediction, excluded as in the method"}
    ids = [it.item_id for it in kris.items]
    assert sorted(ids) == sorted(f"{c}/{k}" for c, k, *_ in KRIS if c != "temporal_prediction")
    multi = next(it for it in kris.items if it.category == "multi-element_composition")
    with Image.open(io.BytesIO(multi.load_source())) as im:
        assert im.size == (192, 64)  # three 64 px sources side by side
    bio = next(it for it in kris.items if it.category == "biology")
    assert bio.meta["explain"] == "a tadpole grows into a frog"
    no_multi = parse_params({"benchmarks": {"kris": {"multi_image": "exclude"}}}).benchmarks
    assert "multi-element_composition/1" in get_benchmark("kris").load(str(tmp_path / "kris"), no_multi).excluded

    rise = get_benchmark("risebench").load(write("risebench", tmp_path / "rise64"), PARAMS.benchmarks)
    assert [it.item_id for it in rise.items] == [i for i, *_ in RISE]
    logical = {it.item_id: it.meta for it in rise.items if it.category == "logical_reasoning"}
    assert logical["logical_reasoning_1"]["reference_img"].endswith("logical_reasoning_images/1_ref.png")
    assert logical["logical_reasoning_2"]["reference"] == "42"
    assert not any(it.meta["consistency_free"] or it.meta["reasoning_img"] for it in rise.items)  # absent = false
    path360 = write_risebench(tmp_path / "rise360", schema="360")
    rise360 = {it.item_id: it for it in get_benchmark("risebench").load(str(path360), PARAMS.benchmarks).items}
    assert (
        rise360["temporal_reasoning_1"].meta["consistency_free"] and rise360["causal_reasoning_1"].meta["reasoning_img"]
    )
    assert rise360["spatial_reasoning_1"].meta["subtask"] == "Component Assembly"


def test_params_name_every_benchmark_and_check_editor_names():
    from editthinker.benchmarks import BENCHMARKS
    from editthinker.config import BENCHMARK_NAMES, ConfigError

    assert set(BENCHMARK_NAMES) == set(BENCHMARKS)
    assert {n: getattr(PARAMS.benchmarks, n).judge_model for n in BENCHMARK_NAMES} == {
        n: b.default_judge for n, b in BENCHMARKS.items()
    }  # the defaults are the official scripts' judges
    with pytest.raises(ConfigError, match="benchmarks.editors"):
        parse_params({"benchmarks": {"editors": ["flux"]}})
    with pytest.raises(ConfigError, match="benchmarks.gate.editor"):
        parse_params({"benchmarks": {"gate": {"editor": "flux"}}})


def test_loader_errors_name_the_problem(tmp_path):
    root = Path(write("imgedit", tmp_path / "imgedit"))
    (root / "style" / "3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 source images missing"):
        get_benchmark("imgedit").load(str(root), PARAMS.benchmarks)
    with pytest.raises(FileNotFoundError, match="annotation.json"):
        get_benchmark("kris").load(str(tmp_path), PARAMS.benchmarks)
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("mmbench")


# -- output layouts ----------------------------------------------------------------------------------------
def test_outputs_land_where_each_official_scorer_reads_them(tmp_path):
    expected = {
        # test_gedit_score.py: <save_path>/<model>/fullset/<task_type>/<lang>/<key>.png and <key>_SRCIMG.png
        "gedit": {f"fullset/{t}/en/{k}{s}.png" for k, t, *_ in GEDIT for s in ("", "_SRCIMG")},
        # basic_bench.py: <result_img_folder>/<key>.png
        "imgedit": {f"images/{k}.png" for k in IMGEDIT},
        # gpt_eval.py: outputs/<MODEL>/images/<category>/<index>.png
        "risebench": {f"images/{c}/{i}.png" for i, c, *_ in RISE},
        # metrics_*.py: results/<model>/<category>/<id>.jpg (only .jpg is read)
        "kris": {f"{c}/{k}.jpg" for c, k, *_ in KRIS if c != "temporal_prediction"},
    }
    for bench, files in expected.items():
        data = write(bench, tmp_path / bench)
        summary = _run(tmp_path / bench, bench, data)
        run_dir = Path(summary["run_dir"])
        assert run_dir.name == "stand-in-editor-t1"
        assert _files(run_dir) - {"run.json", "traces.jsonl"} == files, bench
        run = json.loads((run_dir / "run.json").read_text())
        assert run["items"] == {"total": len(files) if bench != "gedit" else 4, "edited": run["items"]["total"],
                                "failed": 0, "excluded": 1 if bench == "kris" else 0}  # fmt: skip
        traces = [json.loads(line) for line in (run_dir / "traces.jsonl").read_text().splitlines()]
        assert [t["item_id"] for t in traces] == run["item_ids"]
        assert all(len(t["turns"]) == 1 and (run_dir / t["output"]).is_file() for t in traces)
    kris_run = tmp_path / "kris" / "runs" / "stand-in-editor-t1"
    assert all((kris_run / f).read_bytes()[:3] == b"\xff\xd8\xff" for f in expected["kris"])  # JPEG bytes
    gedit_run = tmp_path / "gedit" / "runs" / "stand-in-editor-t1" / "fullset" / "color_alter" / "en"
    src = get_benchmark("gedit").load(str(tmp_path / "gedit"), PARAMS.benchmarks).items[2].load_source()
    assert (gedit_run / "k3_SRCIMG.png").read_bytes() == src  # the source the editor was given, as PNG
    with Image.open(gedit_run / "k3.png") as im:
        assert im.size == GEDIT[2][3]


# -- multi-turn runs, caching and resume ----------------------------------------------------------------------
def _refining_expert(body):
    """An API expert that is never satisfied and appends ' (refined)' to the previous instruction."""
    text = body["messages"][1]["content"][-1]["text"]
    previous = re.search(r"Previous instruction \(the one the editor was given\): (.*)", text).group(1)
    return Answer(format_expert_answer(False, "not yet", previous + " (refined)"))


def _expert_params(tmp_path: Path, base_url: str, **bench):
    expert = {"kind": "openai", "base_url": base_url, "model": "stub", "max_retries": 0,
              "cache_dir": str(tmp_path / "expert-cache")}  # fmt: skip
    return parse_params({"expert": expert, "benchmarks": {"batch_size": 2, **bench}})


def test_resume_after_a_kill_repeats_no_edit_and_no_expert_call(tmp_path):
    data = write("kris", tmp_path / "kris")
    with StubOpenAIServer(respond=_refining_expert) as srv:
        params = _expert_params(tmp_path / "ref", srv.base_url)
        ref_editor = StandInEditor()
        ref = _run(tmp_path / "ref", "kris", data, ref_editor, "expert", 3, params)
        total_edits, total_calls = len(ref_editor.requests), srv.calls
        assert total_edits == 5 * 3 and total_calls == 5 * 2 and ref["stop_reasons"] == {"max_turns": 5}

        params = _expert_params(tmp_path / "resume", srv.base_url)
        before = srv.calls
        crashing = StandInEditor(crash_after=7)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "resume", "kris", data, crashing, "expert", 3, params)
        done_edits, done_calls = len(crashing.requests), srv.calls - before
        killed = json.loads((tmp_path / "resume" / "runs" / "stand-in-expert-t3" / "run.json").read_text())
        assert 0 < done_edits <= 7 and killed["status"] == "running"

        before = srv.calls
        again = StandInEditor()
        summary = _run(tmp_path / "resume", "kris", data, again, "expert", 3, params)
        assert len(again.requests) == total_edits - done_edits  # nothing done before the kill is edited again
        assert srv.calls - before == total_calls - done_calls  # nor asked of the expert again
        assert summary["edits"] == {"computed": total_edits - done_edits, "cached": done_edits}

        before = srv.calls
        third = StandInEditor()
        summary = _run(tmp_path / "resume", "kris", data, third, "expert", 3, params)
        assert third.requests == [] and srv.calls == before and summary["critiques"]["computed"] == 0
    ref_dir, resumed = (
        tmp_path / "ref" / "runs" / "stand-in-expert-t3",
        tmp_path / "resume" / "runs" / "stand-in-expert-t3",
    )
    images = sorted(f for f in _files(ref_dir) if f.endswith(".jpg"))
    assert images and all((ref_dir / f).read_bytes() == (resumed / f).read_bytes() for f in images)
    assert (ref_dir / "traces.jsonl").read_text() == (resumed / "traces.jsonl").read_text()


def test_turn_ablation_reuses_the_shorter_runs_turns(tmp_path):
    data = write("imgedit", tmp_path / "imgedit")
    with StubOpenAIServer(respond=_refining_expert) as srv:
        params = _expert_params(tmp_path, srv.base_url)
        editor = StandInEditor()
        two = _run(tmp_path, "imgedit", data, editor, "expert", 2, params)
        four = _run(tmp_path, "imgedit", data, editor, "expert", 4, params)
        alone = _run(tmp_path, "imgedit", data, editor, "editor", 4, params)
    assert two["edits"] == {"computed": 8, "cached": 0} and four["edits"] == {"computed": 8, "cached": 8}
    assert alone["edits"] == {"computed": 0, "cached": 4} and alone["max_turns"] == 1  # turn 1 is shared
    assert Path(four["run_dir"]).name == "stand-in-expert-t4" and four["mean_turns"] == 4


class _FailingOn(StandInEditor):
    def __init__(self, word: str):
        super().__init__()
        self.word = word

    def edit(self, requests):
        if any(self.word in r.instruction for r in requests):
            raise RuntimeError("CUDA out of memory")
        return super().edit(requests)


def test_a_failed_batch_is_reported_and_retried_by_the_next_run(tmp_path):
    data = write("gedit", tmp_path / "gedit")
    params = parse_params({"benchmarks": {"batch_size": 1}})
    summary = _run(tmp_path, "gedit", data, _FailingOn("moon"), params=params)
    assert summary["failed"] == {"k2": "RuntimeError: CUDA out of memory"} and summary["items"]["edited"] == 3
    assert not (Path(summary["run_dir"]) / "fullset" / "background_change" / "en" / "k2.png").exists()
    editor = StandInEditor()
    again = _run(tmp_path, "gedit", data, editor, params=params)
    assert again["failed"] == {} and [r.instruction for r in editor.requests] == [GEDIT[1][2]]


def test_run_refuses_to_mix_runs_in_one_folder(tmp_path):
    data = write("imgedit", tmp_path / "imgedit")
    _run(tmp_path, "imgedit", data, name="mine")
    with pytest.raises(ValueError, match="holds another run"):
        _run(tmp_path, "imgedit", data, StandInEditor("other"), name="mine")
    (tmp_path / "runs" / "foreign").mkdir()
    (tmp_path / "runs" / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a benchmark run folder"):
        _run(tmp_path, "imgedit", data, name="foreign")
    with pytest.raises(ValueError, match="synthetic expert"):
        _run(tmp_path, "imgedit", data, system="expert")
    with pytest.raises(ValueError, match="thinker:<checkpoint"):
        _run(tmp_path, "imgedit", data, system="thinker")
